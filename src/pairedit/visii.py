"""Visual Instruction Inversion (VISII, Nguyen et al., NeurIPS 2023) on a frozen InstructPix2Pix.

Learn an edit from before → after example pairs as a text conditioning c_T, then apply it to new
images. ``learn`` is Algorithm 1 of the paper, its step comments numbered by the algorithm's lines;
``apply`` is the InstructPix2Pix sampler (``sampling.ip2p_sample``) with the learned conditioning,
optionally followed by the user's words (a hybrid instruction, Fig. 4b), and either the noises
recorded while learning (fixed noise, §5) or fresh random noise.

The learned instruction, the model and the sampler are separate objects: a learned instruction is
a ``pairedit.instruction.LearnedInstruction`` (saved as one .safetensors file), the model is a stock
diffusers ``StableDiffusionInstructPix2PixPipeline``, the sampler is ``sampling.ip2p_sample``.

Command line (``pairedit learn / apply / demo``; ``pairedit COMMAND --help`` explains each option)::

    pairedit learn before.png after.png -o edit.safetensors          # learn one edit
    pairedit apply edit.safetensors photo1.png photo2.png -o out/    # apply it
    pairedit demo -o demo/                                           # bundled example end to end
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from . import __version__
from .errors import UserError
from .images import ImageError, fit, match_pair, to_pil, to_tensor
from .instruction import (
    CHECKPOINT_FORMAT,
    InstructionError,
    LearnedInstruction,
    check_model,
    read_safetensors,
    write_safetensors,
)
from .models import frozen, instruction_bank
from .pez import image_features, pez_caption, pez_optimize, word_tokens_mask
from .sampling import combine_guidance, decode_latents, encode_image_condition, encode_text, ip2p_sample

EXAMPLES_DIR = Path(__file__).parent / "examples"


PAPER_STEPS = 1000  # N, the paper's optimisation steps (§4.1)
# N when c_T starts from a bank pick (init "bank"); not the paper's. There the pick is already a true wording of the
# edit in most directions, and learning on one pair mostly drifts from it. Chosen with DEFAULT_NOISE (random) on the
# bundled world, one pair, edit success on 8 new images per direction, against 1000 steps + fixed noise
# (scripts/compare_inits.py, variants bank-language-250-random vs bank-language): 0.81 vs 0.77 on seeds 1-2's 28
# fresh directions (11 vs 3 flipped; chosen there, docs/visii/session36/noise_steps_seed{1,2}.json); on seeds 3-4
# 0.84 vs 0.82 and 0.80 vs 0.78 (5 vs 3, 5 vs 2; docs/visii/noise_steps_seed{3,4}.json), adopted by a rule written
# down before any seed-4 result was looked at (docs/visii/session37/preregistered.txt). Over the 56 fresh
# directions 0.81 vs 0.79, 21 vs 8 flipped, p = 0.024 (InstructPix2Pix given the true words: 0.87). Either change
# alone did not help: 1000 steps + random noise 19 vs 14, 250 + fixed 16 vs 14.
BANK_STEPS = 250
# apply's noise. "random": fresh noise from the seed; "fixed": the noises recorded while learning (§5 "Noises",
# the paper's finding that they keep more of the input). Random by default with BANK_STEPS (above); from a caption
# init the two did not differ (docs/visii.md §5: edit success 0.49 fixed vs 0.47 random, CLIP image similarity
# 0.417 vs 0.420).
DEFAULT_NOISE = "random"


def default_steps(from_bank: bool) -> int:
    """N for ``VisiiConfig.steps = None``: BANK_STEPS when c_T starts from a bank pick, else the paper's N."""
    return BANK_STEPS if from_bank else PAPER_STEPS


@dataclass
class VisiiConfig:
    """Learning settings; defaults are the paper's (VISII §4.1 "Training Setting", App. C) where no comment says
    why and by how much they differ (init, and N from a bank pick)."""

    # N optimisation steps; None ("auto"): ``default_steps``, the paper's N = 1000 (§4.1, PAPER_STEPS), or
    # BANK_STEPS when c_T starts from a bank pick. From a caption or search init more steps help: 3× the paper's N
    # did somewhat better from one pair on the bundled world (search init; scripts/compare_inits.py, variant
    # search-3x-steps): 0.63 → 0.69 on docs/visii.md's directions (9 vs 3 flipped, p = 0.15,
    # docs/visii/steps_seed0.json), 0.53 → 0.60 on 14 fresh ones (14 vs 6, p = 0.12, steps_seed1.json); 23 vs 9
    # over both (p = 0.02). Kept at the paper's N there: 3× the learning time.
    steps: int | None = None
    lr: float = 1e-3  # γ, AdamW learning rate (§4.1)
    weight_decay: float = 0.01  # AdamW's default decay; the paper names AdamW [25] without a value
    lambda_mse: float = 4.0  # λ_mse (§4.1)
    lambda_clip: float = 0.1  # λ_clip (§4.1)
    s_text: float = 7.5  # text guidance s_T (§4.1), used by loss_on="guided" and recorded for apply
    s_image: float = 1.5  # image guidance s_I (§4.1)
    caption_tokens: int = 10  # length of the PEZ caption that initialises c_T (App. C)
    caption_steps: int = 500  # PEZ optimisation steps (fewer than PEZ's 3000: it is only an init)
    # Where c_T starts when no init text is given. "caption": a PEZ caption of the after-images, the
    # paper's init (App. C). "search": the same PEZ search over whole words, scored by VISII's MSE term
    # on the example pairs instead of by CLIP: an init that fits the edit rather than the after-image.
    # Not the paper's: measured better on the bundled world (docs/visii.md §6, one pair, 14 held-out
    # directions: edit success 0.63 vs 0.55, 18 vs 9 flipped, p = 0.12; confirmed on 14 fresh
    # directions, seed 1, docs/visii/inits_seed1.json by scripts/compare_inits.py: 0.53 vs 0.34,
    # 26 vs 5, p = 0.0002; drawing styles reproduced 0.74 vs 0.57).
    # "bank": the instruction of a list of known ones (models.instruction_bank: the bundled model ships every
    # wording of its world, world.all_instructions, held-out combinations included) that scores best on that MSE
    # term; not the paper's. With every wording rather than the training ones only (session 36, one pair,
    # scripts/compare_inits.py --variants bank bank-language, docs/visii/language_vs_training_bank_seed{1,2}.json):
    # edit success 0.91 vs 0.91 on docs/visii.md's 14 directions (1 vs 1 flipped), 0.81 vs 0.76 (8 vs 2, p = 0.11)
    # and 0.73 vs 0.71 (5 vs 2, p = 0.45) on 14 fresh ones each (seeds 1, 2); the pick is a true wording of the
    # edit in 37 of the 42 directions, against 18. With the training bank (sessions 15-35) it was
    # measured better than "search" (scripts/compare_inits.py, one pair): on docs/visii.md's 14 directions
    # 0.83 vs 0.63, 24 vs 2 flipped, p = 1e-5 (docs/visii/bank_seed0.json); on 14 fresh ones (seed 1) 0.72 vs
    # 0.53, 25 vs 3, p = 3e-5 (bank_seed1.json); on 14 more (seed 2) 0.75 vs 0.57, 25 vs 5, p = 3e-4
    # (bank_seed2.json); on the held-out (edit, shape) directions alone, whose wordings are not in the bank,
    # 0.78 vs 0.45, 0.67 vs 0.41 and 0.62 vs 0.31 (all with 32 ranking samples; see bank_rank_samples).
    # "auto" (default): "bank" when the model has a bank (or one is given), else "search" (a real checkpoint
    # ships none).
    init: str = "auto"
    search_steps: int = 300  # PEZ steps of init="search" (minibatches of search_batch samples)
    search_batch: int = 4  # (pair, t, ε) samples per search step
    search_score_samples: int = 32  # fixed (t, ε) samples per pair that rank the searched prompts
    search_tokens: int = 10  # prompt length of init="search" (the caption's 10, App. C)
    search_words: bool = True  # init="search" draws whole words only (pez.word_tokens_mask)
    bank_screen_samples: int = 8  # init="bank": fixed (t, ε) samples per pair that screen the whole bank
    bank_keep: int = 16  # init="bank": the best this many of the screen are ranked on bank_rank_samples
    # init="bank": fixed (t, ε) samples per pair that rank the kept instructions. More than the search's 32: near
    # the top, candidates differ by less than the noise of 32 draws. On the 17 example pairs of docs/visii.md
    # §1-2, 256 instead of 32 changed 3 picks: 2 to another wording of the same edit, and the watercolour
    # drawing's from the vague "make it a drawing" to "make it a watercolor painting", which is also the pick of
    # 32 draws under another seed and of 256 under both seeds tried. Costs ≈ 40 s more at one thread.
    bank_rank_samples: int = 256
    # init="bank": then try swapping words of the pick for words the bank uses in their place (``swap_words``)
    # and keep the swaps that lower VISII's MSE term. Not the paper's. The bank holds a held-out (edit, shape) edit only
    # with other shape words, and on one pair that term ranks the true shape first in 2 and 6 of 8 such edits
    # (docs/visii/shape_words_seed{1,2}.json). Costs one more rank (≈ 16 texts on bank_rank_samples). Off: on 14
    # fresh directions (seed 1, scripts/compare_inits.py --variants bank bank-swap, docs/visii/swap_seed1.json) it
    # changed 10 of 14 picks but named the right object in 1 of the 8 held-out object edits the pick got wrong;
    # edit success 0.71 vs the plain bank's 0.72 (2 vs 3 flipped, p = 1.0). Swaps for any bank word: 42 vs 43 of
    # 56 (swap_any_seed1.json). Seed 2 (session 30, swap_seed2.json): 0.73 vs 0.72 (3 vs 2, p = 1.0), the right
    # object named in 0 of 8 object edits.
    bank_swap_words: bool = False
    # init="bank": then edit the example's before-images with the pick and with each of its one-word swaps
    # (``substitutes``), InstructPix2Pix sampling with this many seeds (20 steps, s_T, s_I), and keep the text whose
    # edits come nearest the after-images in pixel MSE (``outcome_instruction``); 0: off. Not the paper's. Where the
    # MSE term on noise predictions prefers a wrong or absent object word (docs/visii.md, sessions 27-30), the
    # finished edit shows which object changed. Costs len(candidates) × seeds × pairs samplings (≈ 25 × 2 × 0.6 s).
    # Off: with 2 seeds, on 9 of seed 2's fresh directions (compare_inits.py --variants bank bank-outcome,
    # docs/visii/outcome_seed2_partial.json) 0.75 vs the plain bank's 0.69 (6 vs 2 flipped, p = 0.29), the right
    # object named in 1 of 6 held-out object edits; verb swaps like "shrink the diamond a circle" elsewhere.
    bank_outcome_seeds: int = 0
    # "conditional": Eq. 2 on the conditional prediction ε_θ(z_yt, t, c_T, z_x), as in the paper.
    # "guided": the reference implementation's loss on the two-scale guided prediction.
    # Measured on the bundled world (docs/visii.md §4, 14 held-out directions, both noises, caption init):
    # conditional wins, edit success 0.57 vs 0.40 over 224 paired outputs (McNemar p = 1.2e-7, UNet at
    # 64,018 steps; 0.57 vs 0.35, p = 1e-11, at 50,250; 0.56 vs 0.45, p = 0.012, at 28,265; no
    # significant difference at 8,000 and 4,410 steps). It is also the paper's Eq. 2 and ~2× cheaper per step.
    loss_on: str = "conditional"
    seed: int = 0  # seeds the timesteps, noises, pair choice and the PEZ search

    def __post_init__(self):
        if self.loss_on not in ("conditional", "guided"):
            raise UserError(f"loss_on must be 'conditional' or 'guided', got {self.loss_on!r}")
        if self.init not in ("auto", "caption", "search", "bank"):
            raise UserError(f"init must be 'auto', 'caption', 'search' or 'bank', got {self.init!r}")
        if min(self.search_steps, self.search_batch, self.search_score_samples, self.search_tokens,
               self.bank_screen_samples, self.bank_keep, self.bank_rank_samples) < 1:
            raise UserError("search_steps, search_batch, search_score_samples, search_tokens, bank_screen_samples, "
                            "bank_keep and bank_rank_samples must be ≥ 1")
        if self.bank_outcome_seeds < 0:
            raise UserError(f"bank_outcome_seeds must be ≥ 0, got {self.bank_outcome_seeds}")
        if (self.steps is not None and self.steps < 0) or self.lr <= 0 or self.caption_tokens < 1:
            raise UserError(f"need steps ≥ 0, lr > 0 and caption_tokens ≥ 1 (got steps={self.steps}, lr={self.lr}, "
                            f"caption_tokens={self.caption_tokens})")


class InstructionEmbedding(torch.nn.Module):
    """c_T as a frozen base (1, L, D) and a trainable ``<ins>`` span: positions [start, end).

    VISII App. C: only the tokens strictly between <|startoftext|> and the first <|endoftext|>
    are optimised; the start, end and padding positions stay as the text encoder made them.
    """

    def __init__(self, base: torch.Tensor, start: int, end: int):
        super().__init__()
        self.start, self.end = start, end
        self.register_buffer("base", base.detach().float().clone())
        self.span = torch.nn.Parameter(base[:, start:end].detach().float().clone())

    def forward(self) -> torch.Tensor:
        return torch.cat([self.base[:, :self.start], self.span, self.base[:, self.end:]], dim=1)


# ----------------------------------------------------------------------------------------------
# Pieces of learning and applying


def model_resolution(pipe) -> int:
    """The pixel resolution the UNet was trained at: its latent size × the VAE's downsampling."""
    size = pipe.unet.config.sample_size
    size = min(size) if isinstance(size, (tuple, list)) else size
    return int(size) * int(pipe.vae_scale_factor)


def ins_span(pipe, text: str) -> tuple[torch.Tensor, int, int]:
    """(input ids (1, L), start, end) of ``text``: ``<ins>`` is [1, first <|endoftext|>)."""
    tok = pipe.tokenizer
    ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    eos = (ids[0] == tok.eos_token_id).nonzero()
    end = int(eos[0]) if len(eos) else ids.shape[1]
    if end <= 1:
        raise UserError(f"the initial instruction {text!r} has no tokens; give a non-empty --init-text")
    return ids, 1, end


def encode_instruction(pipe, text: str) -> tuple[torch.Tensor, int, int]:
    """(c_T (1, L, D), start, end): the text encoder's hidden states of ``text`` and its ``<ins>`` span."""
    _, start, end = ins_span(pipe, text)
    return encode_text(pipe, text).float(), start, end


def edit_direction(clip, processor, befores: Sequence[Image.Image], afters: Sequence[Image.Image]) -> torch.Tensor:
    """Δ = mean over pairs of E_clip(after) − E_clip(before) (VISII Eq. 3 / §3.4), shape (P,)."""
    return (image_features(clip, processor, list(afters)) - image_features(clip, processor, list(befores))).mean(0)


def check_clip(pipe, clip, model_id: str, clip_id: str) -> None:
    """The CLIP loss projects text-encoder states with CLIP's text projection: widths must agree."""
    width = pipe.text_encoder.config.hidden_size
    proj = clip.text_projection
    if proj.in_features != width:
        raise UserError(f"CLIP model {clip_id!r} projects {proj.in_features}-wide text states but the text encoder "
                        f"of {model_id!r} is {width} wide; use the CLIP whose text tower the model uses "
                        "(openai/clip-vit-large-patch14 for Stable Diffusion 1.x / InstructPix2Pix)")


def clip_loss(clip, cond: torch.Tensor, start: int, end: int, delta: torch.Tensor) -> torch.Tensor:
    """VISII Eq. 3 as 1 − cos(proj(c_T), Δ).

    Reading of "cosine(c_T, Δ)": c_T is a sequence of text-encoder states, Δ a CLIP image-feature
    difference. We average the ``<ins>`` states and map them with CLIP's ``text_projection`` into
    the joint space. The text encoder of InstructPix2Pix *is* CLIP ViT-L/14's text tower and its
    output is already final-layer-normed, i.e. exactly what CLIP projects for its own text features.
    """
    proj = clip.text_projection
    text = proj(cond[:, start:end].mean(dim=1).to(proj.weight.dtype)).float()
    return 1 - F.cosine_similarity(text, delta.unsqueeze(0).to(text.device), dim=-1).mean()


def visii_loss(config: VisiiConfig, clip, eps_hat: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor, start: int,
               end: int, delta: torch.Tensor) -> torch.Tensor:
    """Alg. 1 l.13 (Eq. 2 + Eq. 3): λ_mse‖ε − ε̂‖² + λ_clip(1 − cos(proj(c_T), Δ)).

    With λ_clip = 0 (the init search) the CLIP term is not computed at all.
    """
    loss = config.lambda_mse * F.mse_loss(eps_hat, eps.to(eps_hat.device))
    if config.lambda_clip:
        loss = loss + config.lambda_clip * clip_loss(clip, cond, start, end, delta)
    return loss


@torch.no_grad()
def encode_pairs(pipe, befores: Sequence[Image.Image],
                 afters: Sequence[Image.Image]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Alg. 1 l.7 per pair: z_x = E(x), the image condition (VAE mode, unscaled, as InstructPix2Pix), and
    z_y = E(y), the diffusion target (VAE mode × scaling factor); images at the model's resolution."""
    z_x = [encode_image_condition(pipe, to_tensor(b)) for b in befores]
    z_y = [encode_image_condition(pipe, to_tensor(a)) * pipe.vae.config.scaling_factor for a in afters]
    return z_x, z_y


def stratified_samples(z_y: Sequence[torch.Tensor], K: int, T: int,
                       generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """K (t, ε) per pair, t evenly spaced over [0, T): fixed draws that rank prompts on the same noise."""
    return [(torch.linspace(0, T - 1, K).long(), torch.randn((K, *zy.shape[1:]), generator=generator)) for zy in z_y]


def noisy_input(noise_schedule, z_x: torch.Tensor, z_y: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
    """The UNet input for len(t) samples: the after-latent noised to z_t (Alg. 1 l.11) next to the before's z_x."""
    z_t = noise_schedule.add_noise(z_y.expand(len(t), -1, -1, -1), eps.to(t.device), t)
    return torch.cat([z_t, z_x.expand(len(t), -1, -1, -1)], dim=1).to(dtype)


def search_instruction(pipe, clip, z_x: Sequence[torch.Tensor], z_y: Sequence[torch.Tensor], delta: torch.Tensor,
                       config: VisiiConfig, progress: bool = False) -> str:
    """A ``search_tokens``-token hard prompt for the edit: PEZ's search scored by VISII's loss.

    Instead of the CLIP similarity to the after-image (``pez_caption``), the projected prompt is
    scored by how well the frozen model, given it and the before-image, denoises the after-image.
    Minibatches of random (pair, t, ε) give the gradient; a fixed set of samples, stratified over
    [0, T) with the same noises for every prompt, ranks the prompts, so that the one returned is
    the best on the same draws and not the luckiest.
    """
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    T = noise_schedule.config.num_train_timesteps
    device, n = pipe.unet.device, config.search_tokens
    g = torch.Generator().manual_seed(config.seed + 1)
    K = config.search_score_samples
    # The MSE term alone. With λ_clip = 0.1 the search found word salad that CLIP puts near Δ and that
    # scored below the true instruction (bundled model, 4 held-out example pairs, 64 fixed samples:
    # 0.075–0.144 vs 0.115–0.181); on the MSE term alone the true instruction scored lowest on all 4.
    search_config = replace(config, lambda_clip=0.0)
    fixed = [(k, t, eps) for k, (t, eps) in enumerate(stratified_samples(z_y, K, T, g))]

    def loss_on(cond, k, t, eps):
        t = t.to(device)
        x_in = noisy_input(noise_schedule, z_x[k], z_y[k], t, eps, pipe.unet.dtype)
        eps_hat = pipe.unet(x_in, t, encoder_hidden_states=cond.to(pipe.unet.dtype).expand(len(t), -1, -1)).sample
        return visii_loss(search_config, clip, eps_hat.float(), eps, cond, 1, n + 1, delta)

    def minibatch_loss(ids):
        k = int(torch.randint(len(z_y), (1,), generator=g))
        t = torch.randint(0, T, (config.search_batch,), generator=g)
        eps = torch.randn((config.search_batch, *z_y[k].shape[1:]), generator=g)
        return loss_on(pipe.text_encoder(ids)[0].float(), k, t, eps)

    def score(ids):
        cond = pipe.text_encoder(ids)[0].float()
        return sum(float(loss_on(cond, k, t, eps)) for k, t, eps in fixed) / len(fixed)

    embedding = pipe.text_encoder.get_input_embeddings()
    allowed = word_tokens_mask(pipe.tokenizer, embedding.num_embeddings) if config.search_words else None
    if allowed is not None and not allowed.any():
        allowed = None  # a vocabulary without whole-word tokens: search all printable tokens
    return pez_optimize(embedding, pipe.tokenizer, minibatch_loss, length=pipe.tokenizer.model_max_length,
                        n_tokens=n, steps=config.search_steps, seed=config.seed, score_fn=score, score_every=10,
                        allowed=allowed, progress=progress, desc="instruction search (PEZ)")


@torch.no_grad()
def instruction_mse(pipe, z_x: Sequence[torch.Tensor], z_y: Sequence[torch.Tensor], texts: Sequence[str], K: int,
                    generator: torch.Generator, progress: bool = False, desc: str = "instructions",
                    per_sample: bool = False) -> torch.Tensor:
    """VISII's MSE term (Eq. 2, conditional prediction) of each of ``texts`` on the pairs, (len(texts),); with
    ``per_sample`` each (pair, t, ε) sample's term, (len(texts), pairs × K), whose row means are those scores.

    Every text is scored on the same K (t, ε) per pair, stratified over [0, T) (``stratified_samples``), so
    that differences between texts are not differences between draws.
    """
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    T = noise_schedule.config.num_train_timesteps
    device, unet = pipe.unet.device, pipe.unet
    samples = [(noisy_input(noise_schedule, zx, zy, t.to(device), eps, unet.dtype), t.to(device), eps.to(device))
               for zx, zy, (t, eps) in zip(z_x, z_y, stratified_samples(z_y, K, T, generator))]
    chunk = max(1, 64 // K)  # texts per UNet call: about 64 samples in a batch
    scores = []
    for i in tqdm(range(0, len(texts), chunk), desc=desc, leave=False, disable=not progress):
        cond = encode_text(pipe, list(texts[i:i + chunk])).to(unet.dtype)
        n = len(cond)
        per_pair = []
        for x_in, t, eps in samples:
            eps_hat = unet(x_in.repeat(n, 1, 1, 1), t.repeat(n), encoder_hidden_states=cond.repeat_interleave(K, 0)).sample
            per_pair.append((eps_hat.float() - eps.repeat(n, 1, 1, 1)).pow(2).flatten(1).mean(1).view(n, K))
        scores.append(torch.cat(per_pair, dim=1))
    scores = torch.cat(scores)
    return scores if per_sample else scores.mean(1)


def bank_instruction(pipe, z_x: Sequence[torch.Tensor], z_y: Sequence[torch.Tensor], bank: Sequence[str],
                     config: VisiiConfig, progress: bool = False) -> str:
    """The instruction of ``bank`` with which the frozen model best makes the afters from the befores.

    Ranked by VISII's MSE term (``instruction_mse``): the whole bank on ``bank_screen_samples`` per pair,
    then its ``bank_keep`` best on ``bank_rank_samples``, as the search ranks its prompts. The screen costs
    len(bank) × bank_screen_samples × pairs UNet evaluations (703 × 8 took ≈ 45 s on the bundled model at one
    thread; the shipped bank holds 788).
    """
    bank = list(bank)
    if not bank:
        raise UserError("the instruction bank is empty; give at least one instruction")
    g = torch.Generator().manual_seed(config.seed + 1)
    screen = instruction_mse(pipe, z_x, z_y, bank, config.bank_screen_samples, g, progress, "instruction bank (screen)")
    keep = [bank[int(i)] for i in screen.argsort()[:config.bank_keep]]
    final = instruction_mse(pipe, z_x, z_y, keep, config.bank_rank_samples, g, progress, "instruction bank (rank)")
    return keep[int(final.argmin())]


def substitutes(text: str, bank: Sequence[str]) -> list[list[str]]:
    """For each word of ``text``, the other words that ``bank`` uses between the same two neighbours.

    Words that share a context are interchangeable in the bank's language (shape for shape in "the _ to",
    colour for colour at "to _" and the end). Unrestricted swaps were tried first: on 8 held-out edits
    (compare_inits.py, seed 1) they found swaps such as "change the game of the square photo red" that lowered
    the MSE term a little without ever naming the right object.
    """
    def contexts(words):
        padded = ["<s>", *words, "</s>"]
        return [(padded[i], padded[i + 2]) for i in range(len(words))]

    fillers: dict[tuple[str, str], set[str]] = {}
    for b in bank:
        for ctx, w in zip(contexts(b.split()), b.split()):
            fillers.setdefault(ctx, set()).add(w)
    words = text.split()
    return [sorted(fillers.get(ctx, set()) - {w}) for ctx, w in zip(contexts(words), words)]


def swap_words(pipe, z_x: Sequence[torch.Tensor], z_y: Sequence[torch.Tensor], text: str, bank: Sequence[str],
               config: VisiiConfig, generator: torch.Generator, progress: bool = False) -> str:
    """``text`` with some words swapped for their ``substitutes`` in ``bank`` where VISII's MSE term improves.

    One round of coordinate descent over words: the one-word swaps (screened on ``bank_screen_samples`` per pair
    when there are more than ``bank_keep``) are ranked next to ``text`` on ``bank_rank_samples``, and the swaps
    that beat it are combined, best first and one per word, as long as each one added still lowers the term on
    the same draws (so a pick with a wrong shape and a wrong colour can lose both).
    """
    words = text.split()

    def swapped(swaps: Sequence[tuple[int, str]]) -> str:
        out = list(words)
        for i, w in swaps:
            out[i] = w
        return " ".join(out)

    swaps = [(i, w) for i, ws in enumerate(substitutes(text, bank)) for w in ws]
    if not swaps:
        return text
    keep = swaps
    if len(swaps) > config.bank_keep:
        screen = instruction_mse(pipe, z_x, z_y, [swapped([s]) for s in swaps], config.bank_screen_samples,
                                 generator, progress, "word swaps (screen)")
        keep = [swaps[int(j)] for j in screen.argsort()[:config.bank_keep]]
    draws = generator.get_state()  # the rank's draws, to score combinations on the same ones
    rank = instruction_mse(pipe, z_x, z_y, [text] + [swapped([s]) for s in keep], config.bank_rank_samples,
                           generator, progress, "word swaps (rank)")
    base = best = float(rank[0])
    chosen = []
    for score, s in sorted(zip(rank[1:].tolist(), keep)):
        if score >= base or any(i == s[0] for i, _ in chosen):
            continue
        if chosen:  # a combination: score it on the rank's draws
            score = float(instruction_mse(pipe, z_x, z_y, [swapped(chosen + [s])], config.bank_rank_samples,
                                          torch.Generator().set_state(draws))[0])
        if score < best:
            best, chosen = score, chosen + [s]
    return swapped(chosen)


def outcome_instruction(pipe, befores: Sequence[Image.Image], afters: Sequence[Image.Image], texts: Sequence[str],
                        config: VisiiConfig, progress: bool = False) -> tuple[str, list[float]]:
    """The text of ``texts`` whose InstructPix2Pix edits of the befores come nearest the afters, and every text's
    score (pixel MSE, mean over pairs and ``config.bank_outcome_seeds`` sampling seeds); the first text wins ties.

    Scores the finished edit rather than noise predictions: a text that names an object the example did not
    change, or none of its objects, makes the model edit the wrong one, which the edited image shows.
    """
    from tqdm.auto import tqdm

    from .editing import ip2p_edit
    from .metrics import mse

    scores = []
    for text in tqdm(texts, desc="instruction outcomes", leave=False, disable=not progress):
        errors = [mse(out, after)
                  for s in range(config.bank_outcome_seeds)
                  for out, after in zip(ip2p_edit(pipe, list(befores), text, s_text=config.s_text,
                                                  s_image=config.s_image, seed=config.seed + s), afters)]
        scores.append(sum(errors) / len(errors))
    return texts[min(range(len(texts)), key=scores.__getitem__)], scores


def one_word_swaps(text: str, bank: Sequence[str]) -> list[str]:
    """``text`` with one word swapped for one of its ``substitutes`` in ``bank``, every way."""
    words = text.split()
    return [" ".join(words[:i] + [w] + words[i + 1:]) for i, ws in enumerate(substitutes(text, bank)) for w in ws]


def hybrid_conditioning(pipe, instruction: LearnedInstruction, prompt: str) -> torch.Tensor:
    """The learned ``<ins>`` tokens followed by the user's words (VISII Fig. 4b).

    Construction: encode "<init text> <prompt>" with the text encoder; its first tokens are exactly
    the init text's (CLIP's BPE works word by word), so positions [start, end) are the ``<ins>``
    span. Replace them with the learned span. The result is: start-of-text, the learned tokens,
    the prompt's tokens' hidden states, end-of-text and padding (as encoded with the init text).
    """
    words = prompt.strip()
    if not words:
        return instruction.cond
    text = f"{instruction.init_text} {words}"
    ids, start, end = ins_span(pipe, text)
    init_ids, _, init_end = ins_span(pipe, instruction.init_text)
    if init_end != instruction.end or not torch.equal(ids[0, :init_end], init_ids[0, :init_end]):
        raise UserError("the instruction's init text does not tokenize as when it was learned; "
                        "was it learned with another tokenizer?")
    if end <= instruction.end:
        raise UserError(f"--prompt {words!r} does not fit: the learned instruction already uses "
                        f"{instruction.end - 1} of {ids.shape[1] - 2} tokens")
    cond = encode_text(pipe, text).float().clone()
    cond[:, instruction.start:instruction.end] = instruction.span.to(cond.device, cond.dtype)
    return cond


def _prepare_pairs(pairs: Sequence[tuple[Image.Image, Image.Image]], resolution: int):
    """Fit each pair to the model's resolution (after resized to before, images.match_pair rule)."""
    if not pairs:
        raise UserError("need at least one before/after pair")
    befores, afters = [], []
    for i, (before, after) in enumerate(pairs):
        after = match_pair(before, after, names=(f"pair {i + 1} before", f"pair {i + 1} after"))
        befores.append(fit(before, resolution))
        afters.append(fit(after, resolution))
    sizes = {im.size for im in befores}
    if len(sizes) > 1:
        raise ImageError(f"the before images fit to different sizes {sorted(sizes)} at resolution {resolution}; "
                         "give pairs of one aspect ratio (the recorded noises need one latent size)")
    return befores, afters


def _content_hash(im: Image.Image) -> str:
    import hashlib

    return hashlib.sha256(f"{im.size}".encode() + im.tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Checkpoints (Ctrl-C during learning; --resume)


def save_checkpoint(path: str | os.PathLike, emb: InstructionEmbedding, opt: torch.optim.Optimizer, step: int,
                    generator_state: torch.Tensor, noise: dict[int, torch.Tensor], losses: list[float],
                    meta: dict) -> Path:
    """Everything needed to continue learning exactly where it stopped, as safetensors + JSON header."""
    state = opt.state.get(emb.span, {})
    tensors = {"base": emb.base, "span": emb.span.detach(), "generator_state": generator_state.to(torch.uint8),
               "losses": torch.tensor(losses, dtype=torch.float64)}
    for k in ("step", "exp_avg", "exp_avg_sq"):
        if k in state:
            tensors[f"adamw.{k}"] = torch.as_tensor(state[k]).reshape(-1) if k == "step" else state[k]
    if noise:
        ts = sorted(noise)
        tensors["noise_timesteps"] = torch.tensor(ts, dtype=torch.int64)
        tensors["noise_table"] = torch.stack([noise[t] for t in ts])
    header = dict(meta, step=step, start=emb.start, end=emb.end)
    return write_safetensors(path, tensors, {"format": CHECKPOINT_FORMAT, "pairedit": json.dumps(header)})


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, header) of a learning checkpoint; bad files → InstructionError naming the file."""
    tensors, metadata = read_safetensors(path, kind="VISII checkpoint")
    if metadata.get("format") != CHECKPOINT_FORMAT or "pairedit" not in metadata:
        raise InstructionError(f"{path}: not a pairedit learning checkpoint (write one by pressing Ctrl-C "
                               "during `pairedit learn`)")
    try:
        header = json.loads(metadata["pairedit"])
        for k in ("step", "start", "end", "config", "fingerprint", "pair_hashes", "init_text"):
            header[k]  # noqa: B018  (presence check)
        for k in ("base", "span", "generator_state", "losses"):
            tensors[k]  # noqa: B018
    except (KeyError, ValueError) as err:
        raise InstructionError(f"{path}: damaged checkpoint ({err})") from err
    return tensors, header


# ----------------------------------------------------------------------------------------------
# Learning (Algorithm 1)


def learn(pipe, clip, processor, pairs: Sequence[tuple[Image.Image, Image.Image]], config: VisiiConfig | None = None,
          *, init_text: str | None = None, model_id: str | None = None, clip_id: str | None = None,
          pair_hashes: list[list[str]] | None = None, bank: Sequence[str] | None = None,
          checkpoint: str | os.PathLike | None = None,
          resume: str | os.PathLike | None = None, progress: bool = True,
          callback: Callable[[int, float], None] | None = None) -> LearnedInstruction:
    """Learn the edit shown by ``pairs`` [(before, after), ...] as an instruction for ``pipe``.

    ``pipe`` is a frozen InstructPix2Pix pipeline, ``clip``/``processor`` the CLIP model of the
    CLIP loss and caption search. ``init_text`` starts c_T from the user's words instead of from
    ``config.init`` (a word search on the pairs, a PEZ caption of the after-images, or the best of
    ``bank``, by default the model folder's instruction bank, ``models.instruction_bank``). On Ctrl-C
    the state is written to ``checkpoint`` (when given) and the KeyboardInterrupt re-raised;
    ``resume`` continues from such a file and gives the same result as an uninterrupted run (its
    config is used, except ``steps``, which may extend it).
    ``callback(step, loss)`` runs after each completed step.

    Noise table rule: each step records its noise under its timestep; when a timestep is drawn
    again, the later noise replaces the earlier one (the last noise the instruction was fitted
    with at t is the one reused at t when applying).
    """
    from diffusers import DDPMScheduler

    from .models import fingerprint

    config = config or VisiiConfig()
    model_id = model_id or getattr(pipe, "name_or_path", None) or "unnamed model"
    clip_id = clip_id or getattr(clip, "name_or_path", None) or "unnamed CLIP"
    resolution = model_resolution(pipe)
    befores, afters = _prepare_pairs(pairs, resolution)
    pair_hashes = pair_hashes or [[_content_hash(b), _content_hash(a)] for b, a in zip(befores, afters)]
    fp = fingerprint(pipe.unet, pipe.text_encoder)
    if config.init == "auto":  # recorded as what it resolved to
        if bank is None and init_text is None and resume is None:
            try:
                bank = instruction_bank(model_id)
            except UserError:
                bank = None
        config = replace(config, init="bank" if bank is not None else "search")
    ckpt, init_trace = None, []
    if resume is not None:
        ckpt, header = load_checkpoint(resume)
        if header["fingerprint"] != fp:
            raise InstructionError(f"{resume}: checkpoint of model {header.get('model_id')!r} (fingerprint "
                                   f"{header['fingerprint']}), not of {model_id!r} (fingerprint {fp})")
        if header["pair_hashes"] != pair_hashes:
            raise InstructionError(f"{resume}: checkpoint was learned from other example images; give the same pairs")
        known = {f.name for f in fields(VisiiConfig)}
        config = VisiiConfig(**{**{k: v for k, v in header["config"].items() if k in known},
                                **({"steps": config.steps} if config.steps is not None else {})})
        init_text = header["init_text"]
        init_trace = header.get("init_trace", [])
    # 0. Check inputs: CLIP loss needs CLIP's projection to fit the text encoder.
    check_clip(pipe, clip, model_id, clip_id)
    device = pipe.unet.device
    unet, vae = pipe.unet, pipe.vae
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)  # the training (VP) noising of Alg. 1 l.11
    T = noise_schedule.config.num_train_timesteps

    with frozen(unet, vae, pipe.text_encoder, clip):
        # Alg. 1 l.7: Encode z_x = E(x) and z_y = E(y). Once, without grad.
        z_x, z_y = encode_pairs(pipe, befores, afters)

        # Alg. 1 l.8: Δ = mean_i E_clip(y_i) − E_clip(x_i). Once, without grad.
        delta = edit_direction(clip, processor, befores, afters)

        # Alg. 1 l.6: Initialize c_T — a PEZ caption of the after-images (App. C), a PEZ search on
        # this loss (config.init = "search"), the best known instruction on it ("bank"), or the user's text.
        if init_text is None and config.init == "caption":
            init_text = pez_caption(clip, processor, afters, n_tokens=config.caption_tokens,
                                    steps=config.caption_steps, seed=config.seed, progress=progress)
        elif init_text is None and config.init == "bank":
            bank = bank if bank is not None else instruction_bank(model_id)
            init_text = bank_instruction(pipe, z_x, z_y, bank, config, progress=progress)
            init_trace = [init_text]
            if config.bank_swap_words:
                g_swap = torch.Generator().manual_seed(config.seed + 2)
                init_text = swap_words(pipe, z_x, z_y, init_text, bank, config, g_swap, progress=progress)
                init_trace.append(init_text)
            if config.bank_outcome_seeds:
                init_text, _ = outcome_instruction(pipe, befores, afters, [init_text, *one_word_swaps(init_text, bank)],
                                                   config, progress=progress)
                init_trace.append(init_text)
        elif init_text is None:
            init_text = search_instruction(pipe, clip, z_x, z_y, delta, config, progress=progress)
        # N: "auto" (None) is fewer steps from a bank pick (the only init that leaves a trace), else the paper's.
        if config.steps is None:
            config = replace(config, steps=default_steps(from_bank=bool(init_trace)))
        if ckpt is not None:
            emb = InstructionEmbedding(ckpt["base"], header["start"], header["end"]).to(device)
            with torch.no_grad():
                emb.span.copy_(ckpt["span"])
        else:
            emb = InstructionEmbedding(*encode_instruction(pipe, init_text)).to(device)
        uncond = encode_text(pipe, "")  # ∅ text for the guided loss, as the IP2P pipeline encodes it

        # Alg. 1 l.4: AdamW with learning rate γ, only on the <ins> span.
        opt = torch.optim.AdamW([emb.span], lr=config.lr, weight_decay=config.weight_decay)
        g = torch.Generator().manual_seed(config.seed)
        noise_table: dict[int, torch.Tensor] = {}
        losses: list[float] = []
        start_step = 0
        if ckpt is not None:
            start_step = int(header["step"])
            g.set_state(ckpt["generator_state"].to(torch.uint8))
            losses = [float(v) for v in ckpt["losses"].tolist()]
            if "noise_table" in ckpt:
                noise_table = {int(t): n for t, n in zip(ckpt["noise_timesteps"].tolist(), ckpt["noise_table"])}
            if "adamw.exp_avg" in ckpt:
                state = opt.state_dict()
                state["state"] = {0: {"step": ckpt["adamw.step"].reshape(()).clone(),
                                      "exp_avg": ckpt["adamw.exp_avg"].to(device),
                                      "exp_avg_sq": ckpt["adamw.exp_avg_sq"].to(device)}}
                opt.load_state_dict(state)
        meta = dict(model_id=model_id, clip_id=clip_id, fingerprint=fp, init_text=init_text, init_trace=init_trace,
                    config=asdict(config), pair_hashes=pair_hashes, resolution=resolution)

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.steps, initial=start_step, desc="learning", leave=False)
        # State as of the last completed step: what a Ctrl-C checkpoint holds.
        done, done_gen = start_step, g.get_state()
        try:
            # Alg. 1 l.9: for i = 1, ..., N
            for step in range(start_step, config.steps):
                # Each step samples one pair (§3.4); with one pair this is always pair 0.
                k = int(torch.randint(len(pairs), (1,), generator=g))
                # Alg. 1 l.10: t ~ U(0, T), ε ~ N(0, 1)
                t = int(torch.randint(0, T, (1,), generator=g))
                eps = torch.randn(z_y[k].shape, generator=g)
                # Alg. 1 l.11: z_yt = add ε to z_y at timestep t
                t_in = torch.tensor([t], device=device)
                z_t = noise_schedule.add_noise(z_y[k], eps.to(device, z_y[k].dtype), t_in)
                # Alg. 1 l.12: ε̂ = ε_θ(z_yt, t, c_T, z_x)
                with torch.enable_grad():
                    cond = emb()
                    x_in = torch.cat([z_t, z_x[k]], dim=1).to(unet.dtype)
                    eps_hat = unet(x_in, t_in, encoder_hidden_states=cond.to(unet.dtype)).sample.float()
                    if config.loss_on == "guided":
                        # The (c_I, ∅) and (∅, ∅) branches do not depend on c_T: no graph for them.
                        with torch.no_grad():
                            x2 = torch.cat([x_in, torch.cat([z_t, torch.zeros_like(z_x[k])], dim=1).to(unet.dtype)])
                            e_img, e_none = unet(x2, t_in, encoder_hidden_states=uncond.expand(2, -1, -1)
                                                 .to(unet.dtype)).sample.float().chunk(2)
                        eps_hat = combine_guidance(eps_hat, e_img, e_none, config.s_text, config.s_image)
                    # Alg. 1 l.13: L = λ_mse‖ε − ε̂‖² + λ_clip(1 − cos(proj(c_T), Δ))
                    loss = visii_loss(config, clip, eps_hat, eps, cond, emb.start, emb.end, delta)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise UserError(f"the loss became {value} at step {step + 1}; try a smaller --lr "
                                        "(or float32 if running in half precision)")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                # Alg. 1 l.14: update c_T (only the <ins> span). Then record this step's noise.
                opt.step()
                noise_table[t] = eps[0]
                losses.append(value)
                done, done_gen = step + 1, g.get_state()
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}")
                if callback is not None:
                    callback(step + 1, value)
        except KeyboardInterrupt:
            if checkpoint is not None:
                save_checkpoint(checkpoint, emb, opt, done, done_gen, noise_table, losses, meta)
                print(f"\npairedit: learning interrupted after step {done}/{config.steps}; state saved to "
                      f"{checkpoint} (continue with --resume {checkpoint})", file=sys.stderr)
            raise
        finally:
            if bar:
                bar.close()

    # Alg. 1 l.16: Output c_T (with the recorded noises and where it came from).
    ts = sorted(noise_table)
    latent_shape = tuple(z_y[0].shape[1:])
    return LearnedInstruction(
        cond=emb().detach().cpu(), start=emb.start, end=emb.end,
        noise_timesteps=torch.tensor(ts, dtype=torch.int64),
        noise_table=torch.stack([noise_table[t] for t in ts]) if ts else torch.zeros((0, *latent_shape)),
        model_id=model_id, clip_id=clip_id, fingerprint=fp, init_text=init_text, init_trace=init_trace,
        config=asdict(config), pair_hashes=pair_hashes, resolution=resolution, image_size=list(befores[0].size),
        losses=losses, pairedit_version=__version__)


# ----------------------------------------------------------------------------------------------
# Applying


def fit_for(instruction: LearnedInstruction, images: Sequence[Image.Image], noise: str = DEFAULT_NOISE,
            pipe=None, names: Sequence[str] | None = None) -> list[Image.Image]:
    """The images fitted to the learning resolution; with fixed noise they must fit to the learning
    size (the recorded noises have one latent size). Checked before any model work."""
    resolution = instruction.resolution or model_resolution(pipe)
    fitted = [fit(im, resolution) for im in images]
    if noise != "fixed":
        return fitted
    if instruction.noise_table.shape[0] == 0:
        raise UserError("the instruction has no recorded noises (learned for 0 steps); use random noise")
    size = tuple(instruction.image_size) if instruction.image_size else None
    for i, im in enumerate(fitted):
        if size is not None and im.size != size:
            name = names[i] if names else f"image {i + 1}"
            raise ImageError(f"{name}: fits to {im.width}×{im.height}, but the noises were recorded at "
                             f"{size[0]}×{size[1]}; use random noise (--noise random) for other aspect ratios")
    return fitted


@torch.no_grad()
def apply(pipe, instruction: LearnedInstruction, images: Sequence[Image.Image] | Image.Image, prompt: str | None = None,
          noise: str = DEFAULT_NOISE, seed: int = 0, steps: int = 20, s_text: float = 7.5, s_image: float = 1.5, *,
          model_id: str | None = None, check: bool = True, progress: bool = False) -> list[Image.Image]:
    """Edit ``images`` with a learned instruction; returns PIL images at the learning resolution.

    ``prompt`` adds words after the learned tokens (hybrid instruction, Fig. 4b). ``noise="fixed"``
    reuses the noises recorded while learning (§5 "Noises"; deterministic, needs the learning
    latent size), ``"random"`` draws fresh noise from ``seed``.
    """
    # 1. Check inputs: the model the instruction was learned on, the noise mode.
    if isinstance(images, Image.Image):
        images = [images]
    if noise not in ("fixed", "random"):
        raise UserError(f"noise must be 'fixed' or 'random', got {noise!r}")
    if check:
        check_model(instruction, pipe, model_id)
    # 2. Preprocess: fit to the learning resolution (images.fit rule).
    fitted = fit_for(instruction, images, noise, pipe)
    # 3. Encode the conditioning: the learned c_T, or the hybrid with the user's words; and ∅.
    device = pipe.unet.device
    cond = (hybrid_conditioning(pipe, instruction, prompt) if prompt else instruction.cond).to(device)
    uncond = encode_text(pipe, "")
    # 4. Noise source: the recorded noises, or a seeded generator.
    fixed = instruction.fixed_noise() if noise == "fixed" else None
    generator = torch.Generator().manual_seed(seed)
    outputs: list[Image.Image | None] = [None] * len(fitted)
    # 5. One batch per image size (all sizes are equal for square images).
    for size in dict.fromkeys(im.size for im in fitted):
        idx = [i for i, im in enumerate(fitted) if im.size == size]
        # 6. Prepare the image condition c_I (VAE mode, unscaled).
        image_cond = encode_image_condition(pipe, to_tensor([fitted[i] for i in idx]))
        # 7. Denoising loop: the one InstructPix2Pix sampler.
        latents = ip2p_sample(pipe, image_cond, cond, uncond, steps=steps, s_text=s_text, s_image=s_image,
                              noise=fixed, generator=generator, progress=progress)
        # 8. Decode.
        for i, im in zip(idx, to_pil(decode_latents(pipe, latents))):
            outputs[i] = im
    return outputs


# ----------------------------------------------------------------------------------------------
# Command line: pairedit learn / apply / demo


def add_cli(sub) -> None:
    """Register ``learn``, ``apply`` and ``demo`` on the ``pairedit`` subcommand parser."""
    from .cli import add_model_args

    d = VisiiConfig()
    p = sub.add_parser(
        "learn", help="learn an edit from before/after example pairs (Visual Instruction Inversion)",
        description="Learn the edit shown by one or more before → after example pairs as an instruction for "
                    "an InstructPix2Pix model, and save it as one .safetensors file. Ctrl-C saves a checkpoint "
                    "next to the output; continue with --resume.")
    p.add_argument("images", nargs="+", metavar="BEFORE AFTER",
                   help="image files, in pairs: before1 after1 [before2 after2 ...]")
    p.add_argument("-o", "--output", required=True, metavar="EDIT.safetensors", help="where to save the instruction")
    p.add_argument("--init-text", default=None,
                   help="start from these words (a rough description of the edit) instead of from --init")
    p.add_argument("--init", choices=["auto", "caption", "search", "bank"], default=d.init,
                   help="without --init-text, start from a PEZ caption of the after image(s) (the paper's init), "
                        "from a PEZ search scored by how well the model makes the afters from the befores, or from "
                        "the known instruction (--bank) that scores best on that; auto: bank when the model folder "
                        "has an instructions.txt or --bank is given, else search (default: %(default)s; compared in "
                        "docs/visii.md §6 and README; on the bundled model at one thread the bank takes ≈ 95 s, "
                        "the search ≈ 40 s, 1000 learning steps ≈ 90 s)")
    p.add_argument("--bank", default=None, metavar="FILE",
                   help="--init bank: a text file of instructions, one per line (default: the model folder's "
                        "instructions.txt; the bundled model ships every instruction of its world, held-out edits included)")
    p.add_argument("--search-steps", type=int, default=d.search_steps,
                   help="steps of the search of --init search (default: %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"optimisation steps N (default: {BANK_STEPS} when starting from the bank's pick, else "
                        f"{PAPER_STEPS} as the paper; measured in docs/visii.md and README)")
    p.add_argument("--loss-on", choices=["conditional", "guided"], default=d.loss_on,
                   help="noise-prediction loss on the conditional prediction (paper Eq. 2) or on the guided one "
                        "(reference code) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of timesteps, noises and caption search (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--lambda-mse", type=float, default=d.lambda_mse,
                   help="weight λ_mse of the noise-prediction loss (default: %(default)s)")
    p.add_argument("--lambda-clip", type=float, default=d.lambda_clip,
                   help="weight λ_clip of the CLIP direction loss (default: %(default)s)")
    p.add_argument("--caption-steps", type=int, default=d.caption_steps,
                   help="steps of the PEZ caption search that initialises the instruction (default: %(default)s)")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue an interrupted run from its checkpoint (its settings are used, except --steps)")
    add_model_args(p)
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser(
        "apply", help="apply a learned edit to images",
        description="Apply an instruction learned by `pairedit learn` to images. Writes OUTDIR/<name>_edited.png "
                    "per input and OUTDIR/grid.png (input | output).")
    p.add_argument("instruction", metavar="EDIT.safetensors", help="a learned instruction file")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="images to edit")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the edited images")
    p.add_argument("--prompt", default=None,
                   help="extra words appended after the learned instruction (hybrid instruction, VISII Fig. 4b); "
                        "instructions learned with --init search did better at this than --init bank (README)")
    p.add_argument("--noise", choices=["fixed", "random"], default=DEFAULT_NOISE,
                   help="random: fresh noise from --seed; fixed: reuse the noises recorded while learning (VISII §5; "
                        "deterministic too) (default: %(default)s, measured better with the bank init: docs/visii.md)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random noise (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=d.s_text, help="text guidance scale s_T (default: %(default)s)")
    p.add_argument("--image-guidance", type=float, default=d.s_image, help="image guidance scale s_I (default: %(default)s)")
    add_model_args(p, clip=False)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser(
        "demo", help="learn the bundled example edit and apply it to bundled test images",
        description="Learn the edit of the bundled example pair with the bundled models, apply it to the "
                    "bundled test images and write a grid: before | learned output | true after.")
    p.add_argument("-o", "--output", default="pairedit-demo", metavar="OUTDIR",
                   help="folder for the results (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"learning steps (default: the library's, {BANK_STEPS} from the bundled bank's pick)")
    add_model_args(p)
    p.set_defaults(func=cmd_demo)


def _load_pairs(paths: list[str]) -> list[tuple[Image.Image, Image.Image]]:
    """Read BEFORE AFTER ... files as pairs; every problem names the file."""
    from .images import load_image

    if len(paths) % 2:
        raise UserError(f"images come in before/after pairs; got {len(paths)} files (an odd number)")
    pairs = []
    for b, a in zip(paths[::2], paths[1::2]):
        before, after = load_image(b), load_image(a)
        pairs.append((before, match_pair(before, after, names=(b, a))))
    return pairs


def _refuse_overwrite(outputs: Sequence[str | os.PathLike], inputs: Sequence[str | os.PathLike]) -> None:
    """Fail before any work when an output would replace an input (creates nothing)."""
    for out in map(Path, outputs):
        for p in map(Path, inputs):
            if out.exists() and p.exists() and out.resolve() == p.resolve():
                raise ImageError(f"{out}: refusing to overwrite an input file")


def _load_models(args, clip: bool = True):
    from .cli import torch_dtype
    from .models import load_clip, load_ip2p

    pipe = load_ip2p(args.model, device=args.device, dtype=torch_dtype(args.dtype))
    if not clip:
        return pipe
    model, processor = load_clip(args.clip, device=args.device, dtype=torch_dtype(args.dtype))
    return pipe, model, processor


def cmd_learn(args) -> int:
    from .instruction import save_instruction, sha256_file

    # Check everything before loading models or writing anything.
    pairs = _load_pairs(args.images)
    out = Path(args.output)
    _refuse_overwrite([out], args.images)
    if args.resume is not None:
        load_checkpoint(args.resume)
    if args.bank and args.init in ("caption", "search"):
        raise UserError(f"--bank is read by --init bank or auto, not by --init {args.init}")
    bank = None
    if args.init_text is None and (args.init == "bank" or (args.init == "auto" and args.bank)):
        bank = instruction_bank(args.model, args.bank)
    hashes = [[sha256_file(b), sha256_file(a)] for b, a in zip(args.images[::2], args.images[1::2])]
    config = VisiiConfig(steps=args.steps, lr=args.lr, lambda_mse=args.lambda_mse, lambda_clip=args.lambda_clip,
                         loss_on=args.loss_on, seed=args.seed, caption_steps=args.caption_steps, init=args.init,
                         search_steps=args.search_steps)
    pipe, clip, processor = _load_models(args)
    ckpt = out.with_name(out.name.removesuffix(".safetensors") + ".ckpt.safetensors")
    inst = learn(pipe, clip, processor, pairs, config, init_text=args.init_text, model_id=args.model,
                 clip_id=args.clip, pair_hashes=hashes, bank=bank, checkpoint=ckpt, resume=args.resume, progress=True)
    save_instruction(inst, out)
    last = f", final loss {inst.losses[-1]:.4f}" if inst.losses else ""
    print(f"learned {inst.config['steps']} steps from {len(pairs)} pair(s), init text {inst.init_text!r}{last}")
    print(f"saved {out}")
    return 0


def _output_names(paths: list[str]) -> list[str]:
    """<stem>_edited.png per input, numbered when two inputs share a stem."""
    names, seen = [], {}
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}_edited.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}_edited.png")
    return names


def cmd_apply(args) -> int:
    from .images import grid, load_image, save_image
    from .instruction import load_instruction

    inst = load_instruction(args.instruction)
    images = [load_image(p) for p in args.images]
    fit_for(inst, images, args.noise, names=args.images)
    outdir = Path(args.output)
    inputs = [*args.images, args.instruction]
    targets = [outdir / n for n in _output_names(args.images)]
    grid_path = outdir / "grid.png"
    _refuse_overwrite([*targets, grid_path], inputs)
    pipe = _load_models(args, clip=False)
    check_model(inst, pipe, args.model, name=args.instruction)
    outs = apply(pipe, inst, images, prompt=args.prompt, noise=args.noise, seed=args.seed, steps=args.steps,
                 s_text=args.guidance, s_image=args.image_guidance, check=False, progress=True)
    for im, path in zip(outs, targets):
        save_image(im, path, inputs)
    fitted = [fit(im, inst.resolution) for im in images]
    save_image(grid([[a, b] for a, b in zip(fitted, outs)], labels=["input", "output"],
                    row_labels=[Path(p).name for p in args.images]), grid_path, inputs)
    print(f"wrote {len(outs)} edited image(s) and {grid_path} to {outdir}")
    return 0


def example_files() -> tuple[tuple[Path, Path], list[tuple[Path, Path]], dict]:
    """(example pair, [(test before, true after), ...], description) of the bundled example."""
    info = json.loads((EXAMPLES_DIR / "examples.json").read_text())
    pair = (EXAMPLES_DIR / info["example"][0], EXAMPLES_DIR / info["example"][1])
    tests = [(EXAMPLES_DIR / b, EXAMPLES_DIR / a) for b, a in info["tests"]]
    return pair, tests, info


def cmd_demo(args) -> int:
    from .images import grid, load_image, save_image
    from .instruction import save_instruction

    (b, a), tests, info = example_files()
    before, after = load_image(b), load_image(a)
    test_pairs = [(load_image(tb), load_image(ta)) for tb, ta in tests]
    pipe, clip, processor = _load_models(args)
    outdir = Path(args.output)
    print(f"learning the example edit ({info['instruction']!r}, not shown to the model) ...")
    config = VisiiConfig(steps=args.steps)
    inst = learn(pipe, clip, processor, [(before, after)], config, model_id=args.model, clip_id=args.clip,
                 progress=True)
    # The example's own before is applied too: its row shows how well the pair itself is reproduced.
    all_pairs = [(before, after), *test_pairs]
    outs = apply(pipe, inst, [t for t, _ in all_pairs], check=False)
    rows = [[fit(t, inst.resolution), o, fit(ta, inst.resolution)] for (t, ta), o in zip(all_pairs, outs)]
    path = save_image(grid(rows, labels=["before", "learned output", "true after"],
                           row_labels=["example pair"] + [f"test {i + 1}" for i in range(len(tests))]),
                      outdir / "demo_grid.png")
    save_instruction(inst, outdir / "demo_edit.safetensors")
    how = {"caption": "PEZ caption", "search": "searched", "bank": "best of the instruction bank"}
    print(f"learned {inst.config['steps']} steps from the init text ({how.get(inst.config['init'], inst.config['init'])}): "
          f"{inst.init_text!r}")
    print(f"wrote {path} (rows: example pair, then test images; columns: before | learned output | true after)")
    return 0
