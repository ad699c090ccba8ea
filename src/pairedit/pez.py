"""PEZ: hard prompts by projected-gradient search over a text encoder's vocabulary.

Wen et al. 2023, "Hard Prompts Made Easy" (Alg. 1): keep a continuous prompt P (one embedding per
token); at every step project P onto the nearest vocabulary embeddings P' (cosine), compute the
loss *with P'* and apply its gradient to P (straight-through). ``pez_optimize`` is that loop for
any loss of the projected prompt; ``pez_caption`` is PEZ proper, whose loss is the CLIP image-text
distance 1 − cos(E_text(P'), E_img), E_img the normalised mean CLIP feature of the target images.

VISII (App. C) initialises its instruction from such a 10-token caption of the after-image;
``visii.search_instruction`` runs the same loop with VISII's own loss instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from .models import frozen


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


def word_tokens_mask(tokenizer, vocab_size: int) -> torch.Tensor:
    """(V,) bool: tokens that are whole alphabetic words of two or more letters.

    A prompt of whole words decodes to text that re-encodes to the same tokens, and reads as words
    rather than as glued word pieces ("remopurple").
    """
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    for token, i in tokenizer.get_vocab().items():
        word = token[:-len("</w>")] if token.endswith("</w>") else None
        if i < vocab_size:
            mask[i] = word is not None and len(word) >= 2 and word.isalpha()
    return mask


def pez_caption(clip, processor, images: list[Image.Image] | Image.Image, n_tokens: int = 10, steps: int = 500,
                lr: float = 0.1, weight_decay: float = 0.1, seed: int = 0, progress: bool = False) -> str:
    """A ``n_tokens``-token text that CLIP finds similar to ``images`` (PEZ, Wen et al. 2023).

    Defaults follow the PEZ paper (AdamW, lr 0.1, weight decay 0.1) with fewer steps than its 3000,
    since the result only initialises VISII's instruction (App. C).
    """
    if isinstance(images, Image.Image):
        images = [images]
    # Target: the normalised mean CLIP feature of the images.
    target = F.normalize(F.normalize(image_features(clip, processor, images), dim=-1).mean(0, keepdim=True), dim=-1)

    def loss(ids: torch.Tensor) -> torch.Tensor:
        text = F.normalize(features(clip.get_text_features(input_ids=ids)).float(), dim=-1)
        return 1 - (text * target.to(text.device)).sum()

    with frozen(clip):
        return pez_optimize(clip.text_model.embeddings.token_embedding, processor.tokenizer, loss,
                            length=min(processor.tokenizer.model_max_length,
                                       clip.config.text_config.max_position_embeddings),
                            n_tokens=n_tokens, steps=steps, lr=lr, weight_decay=weight_decay, seed=seed,
                            progress=progress, desc="caption (PEZ)")


def pez_optimize(embedding: torch.nn.Embedding, tokenizer, loss_fn: Callable[[torch.Tensor], torch.Tensor], *,
                 length: int, n_tokens: int, steps: int, lr: float = 0.1, weight_decay: float = 0.1, seed: int = 0,
                 score_fn: Callable[[torch.Tensor], float] | None = None, score_every: int = 1,
                 allowed: torch.Tensor | None = None, progress: bool = False, desc: str = "PEZ") -> str:
    """The best ``n_tokens``-token prompt found by PEZ's projected-gradient search on ``loss_fn``.

    ``loss_fn(ids)`` runs the model on padded input ids (1, ``length``) and returns a scalar; while
    it runs, ``embedding`` returns the continuous prompt in the token positions, with the projected
    tokens' values (straight-through). The best prompt is the one with the lowest loss, or, for a
    noisy loss, the lowest ``score_fn(ids)`` (a fixed-sample estimate, no gradient), evaluated every
    ``score_every`` steps on the prompt of that step and memoised per prompt. ``allowed`` (V,) bool
    limits the vocabulary (default: every printable token, ``caption_tokens_mask``).
    """
    vocab = embedding.weight.detach()
    # Only tokens that print as text can be part of a prompt: special tokens and partial UTF-8
    # byte tokens are excluded from the projection (they would not survive decode → re-encode).
    if allowed is None:
        allowed = caption_tokens_mask(tokenizer, vocab.shape[0])
    vocab_unit = F.normalize(vocab.float(), dim=-1)
    if n_tokens + 2 > length:
        raise ValueError(f"a {n_tokens}-token prompt does not fit in {length} positions")

    # Continuous prompt P initialised from random vocabulary tokens.
    g = torch.Generator().manual_seed(seed)
    candidates = allowed.nonzero().squeeze(1)
    init_ids = candidates[torch.randint(len(candidates), (n_tokens,), generator=g)]
    soft = torch.nn.Parameter(vocab[init_ids].clone().float())
    opt = torch.optim.AdamW([soft], lr=lr, weight_decay=weight_decay)

    ids = torch.full((1, length), tokenizer.pad_token_id, dtype=torch.long)
    ids[0, 0] = tokenizer.bos_token_id
    ids[0, n_tokens + 1] = tokenizer.eos_token_id

    def straight_through(module, inputs, out):
        # The embedding layer returns the projected tokens' embeddings P'; make the span's value
        # P' but its gradient flow to the continuous P.
        out = out.clone()
        span = out[:, 1:n_tokens + 1]
        out[:, 1:n_tokens + 1] = soft.to(out.dtype) + (span - soft.to(out.dtype)).detach()
        return out

    best, best_ids, scores = float("inf"), init_ids, {}
    hook = embedding.register_forward_hook(straight_through)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, leave=False)
    try:
        for step in range(steps):
            # Project P onto the vocabulary (cosine nearest neighbour), only onto allowed tokens.
            with torch.no_grad():
                sim = F.normalize(soft.detach(), dim=-1) @ vocab_unit.T
                sim[:, ~allowed] = -float("inf")
                proj_ids = sim.argmax(dim=-1)
            ids[0, 1:n_tokens + 1] = proj_ids
            # Loss of the projected prompt, gradient into P (straight-through), AdamW step.
            with torch.enable_grad():
                loss = loss_fn(ids.to(vocab.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
            # The prompt's rank: this loss, or for a noisy loss its memoised fixed-sample score.
            rank = float(loss.detach()) if score_fn is None else None
            if score_fn is not None and step % score_every == 0:
                key = tuple(proj_ids.tolist())
                if key not in scores:
                    with torch.no_grad():
                        scores[key] = float(score_fn(ids.to(vocab.device)))
                rank = scores[key]
            if rank is not None and rank < best:
                best, best_ids = rank, proj_ids.clone()
            opt.step()
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    finally:
        hook.remove()
        if bar:
            bar.close()
    # The best projected prompt, as text.
    return tokenizer.decode(best_ids.tolist(), skip_special_tokens=True).strip()

