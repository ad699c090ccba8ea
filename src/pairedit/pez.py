"""PEZ: a hard-prompt caption of images by projected-gradient search over CLIP's vocabulary.

Wen et al. 2023, "Hard Prompts Made Easy" (Alg. 1): keep a continuous prompt P (one embedding per
token); at every step project P onto the nearest vocabulary embeddings P' (cosine), compute the
loss *with P'* and apply its gradient to P (straight-through). The loss is the CLIP image-text
distance 1 − cos(E_text(P'), E_img), E_img the normalised mean CLIP feature of the target images.
The best projected prompt seen is returned, decoded to text.

VISII (App. C) initialises its instruction from such a 10-token caption of the after-image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image


def features(out) -> torch.Tensor:
    """The projected features of ``CLIPModel.get_{image,text}_features`` (a tensor, or in
    transformers ≥ 5 an output whose ``pooler_output`` is the projection)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def image_features(clip, processor, images: list[Image.Image]) -> torch.Tensor:
    """CLIP image features (B, P) of PIL images, preprocessed by CLIP's own processor."""
    pixels = processor(images=images, return_tensors="pt").pixel_values
    p = next(clip.parameters())
    return features(clip.get_image_features(pixel_values=pixels.to(p.device, p.dtype))).float()


def caption_tokens_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """(V,) bool: the tokens a caption may use — not special, and decoding to printable text."""
    special = set(tokenizer.all_special_ids)
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(vocab_size):
        if i in special:
            continue
        text = tokenizer.decode([i])
        mask[i] = bool(text.strip()) and text.isprintable() and "\ufffd" not in text
    return mask


def pez_caption(clip, processor, images: list[Image.Image] | Image.Image, n_tokens: int = 10, steps: int = 500,
                lr: float = 0.1, weight_decay: float = 0.1, seed: int = 0, progress: bool = False) -> str:
    """A ``n_tokens``-token text that CLIP finds similar to ``images`` (PEZ, Wen et al. 2023).

    Defaults follow the PEZ paper (AdamW, lr 0.1, weight decay 0.1) with fewer steps than its 3000,
    since the result only initialises VISII's instruction (App. C).
    """
    if isinstance(images, Image.Image):
        images = [images]
    tok = processor.tokenizer
    embedding = clip.text_model.embeddings.token_embedding
    vocab = embedding.weight.detach()
    # Only tokens that print as text can be part of a caption: special tokens and partial UTF-8
    # byte tokens are excluded from the projection (they would not survive decode → re-encode).
    allowed = caption_tokens_mask(tok, vocab.shape[0])
    vocab_unit = F.normalize(vocab.float(), dim=-1)
    length = min(tok.model_max_length, clip.config.text_config.max_position_embeddings)
    if n_tokens + 2 > length:
        raise ValueError(f"a {n_tokens}-token caption does not fit in {length} positions")

    # 1. Target: the normalised mean CLIP feature of the images.
    target = F.normalize(F.normalize(image_features(clip, processor, images), dim=-1).mean(0, keepdim=True), dim=-1)

    # 2. Continuous prompt initialised from random vocabulary tokens.
    g = torch.Generator().manual_seed(seed)
    candidates = allowed.nonzero().squeeze(1)
    init_ids = candidates[torch.randint(len(candidates), (n_tokens,), generator=g)]
    soft = torch.nn.Parameter(vocab[init_ids].clone().float())
    opt = torch.optim.AdamW([soft], lr=lr, weight_decay=weight_decay)

    ids = torch.full((1, length), tok.pad_token_id, dtype=torch.long)
    ids[0, 0] = tok.bos_token_id
    ids[0, n_tokens + 1] = tok.eos_token_id
    state = {}

    def straight_through(module, inputs, out):
        # The embedding layer returns the projected tokens' embeddings P'; make the span's value
        # P' but its gradient flow to the continuous P.
        out = out.clone()
        span = out[:, 1:n_tokens + 1]
        out[:, 1:n_tokens + 1] = soft.to(out.dtype) + (span - soft.to(out.dtype)).detach()
        return out

    best_loss, best_ids = float("inf"), init_ids
    hook = embedding.register_forward_hook(straight_through)
    frozen = [(p, p.requires_grad) for p in clip.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="caption (PEZ)", leave=False)
    try:
        for _ in range(steps):
            # 3. Project P onto the vocabulary (cosine nearest neighbour), only onto allowed tokens.
            with torch.no_grad():
                sim = F.normalize(soft.detach(), dim=-1) @ vocab_unit.T
                sim[:, ~allowed] = -float("inf")
                proj_ids = sim.argmax(dim=-1)
            ids[0, 1:n_tokens + 1] = proj_ids
            # 4. Loss of the projected prompt, gradient into P (straight-through), AdamW step.
            with torch.enable_grad():
                text = F.normalize(features(clip.get_text_features(input_ids=ids.to(vocab.device))).float(), dim=-1)
                loss = 1 - (text * target).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            state["loss"] = float(loss.detach())
            if state["loss"] < best_loss:
                best_loss, best_ids = state["loss"], proj_ids.clone()
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{state['loss']:.4f}")
    finally:
        hook.remove()
        for p, req in frozen:
            p.requires_grad_(req)
        if bar:
            bar.close()
    # 5. The best projected prompt, as text.
    return tok.decode(best_ids.tolist(), skip_special_tokens=True).strip()
