"""The embedded default's training chain: tokenizer → CLIP → VAE → text-to-image UNet → InstructPix2Pix UNet.

Each stage reads the previous stages from one run folder and writes its model there in the
stock diffusers/transformers format (``<run>/<stage>/final``); ``export`` assembles the bundle.

    pairedit train tokenizer --run RUN
    pairedit train clip --run RUN          # CLIP, contrastive on (image, caption)
    pairedit train vae --run RUN           # AutoencoderKL 64×64 → 16×16×4
    pairedit train t2i --run RUN           # latent diffusion, frozen CLIP text tower, text dropout
    pairedit train ip2p --run RUN          # InstructPix2Pix recipe (paper §3.2, §3.2.1)
    pairedit train export --run RUN        # → src/pairedit/bundled/{clip,sd,ip2p}
    accelerate launch -m pairedit.cli train ip2p --run RUN --base runwayml/stable-diffusion-v1-5 ...

The ip2p stage takes any text-to-image checkpoint as ``--base`` (a folder or hub id), so the same
trainer fine-tunes a real Stable Diffusion into an InstructPix2Pix model on a GPU.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import models, world
from ..errors import UserError
from .common import (
    LoopConfig,
    is_main_process,
    latest_checkpoint,
    load_weights,
    main_process_first,
    train_loop,
    training_device,
    write_json,
)
from .data import object_pixels, pairs_dataset, partial_caption, scenes_dataset, to_clip_input, to_unit


def _final(run: Path, stage: str) -> Path:
    path = Path(run) / stage / "final"
    if not path.exists():
        raise models.ModelNotAvailable(f"{path} does not exist: run `pairedit train {stage} --run {run}` first")
    return path


def _tokenizer(run: Path):
    """The run's tokenizer (``pairedit train tokenizer``), the first stage every other one reads."""
    from transformers import CLIPTokenizer

    path = Path(run) / "tokenizer"
    if not (path / "vocab.json").exists():
        raise models.ModelNotAvailable(f"{path} does not exist: run `pairedit train tokenizer --run {run}` first")
    return CLIPTokenizer.from_pretrained(path)


def _record(run: Path, stage: str, cfg, seconds: float) -> None:
    """Add the stage's config, wall time and process CPU time to <run>/provenance.json (for docs/models.md)."""
    import json

    path = Path(run) / "provenance.json"
    prov = json.loads(path.read_text()) if path.exists() else {}
    old = prov.get(stage, {})
    prov[stage] = {"config": dict(cfg.__dict__), "seconds_this_run": round(seconds, 1),
                   "seconds_total": round(old.get("seconds_total", 0) + seconds, 1),
                   "cpu_seconds_total": round(old.get("cpu_seconds_total", 0) + time.process_time(), 1)}
    write_json(path, prov)


# ----------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(run: Path, vocab_size: int = 1024) -> None:
    models.build_tokenizer(world.corpus(), Path(run) / "tokenizer", vocab_size=vocab_size)


# ----------------------------------------------------------------------------------------------
# CLIP


@dataclass
class ClipTrainConfig(LoopConfig):
    width: int = 128
    layers: int = 4
    n_scenes: int = 40_000
    partial_captions: float = 0.2  # share of captions with parts dropped, so short texts mean something
    base: str = ""  # continue from a CLIP checkpoint (folder or hub id) and its tokenizer; '' = a new model
    # A text encoder folder (e.g. ip2p/final/text_encoder of a --train-text-encoder run) that replaces the text
    # tower and stays frozen while the rest refits to it: CLIP's text tower stays the diffusion models' encoder.
    text_tower: str = ""
    # Hard negatives per batch (NegCLIP, Yuksekgonul et al. 2023): this many fresh training scenes, each with its
    # shape twin (world.shape_twin: one object's shape changed), join the batch as images and captions. In-batch
    # captions seldom differ only in a shape, so plain training learns colours, backgrounds and styles first: the
    # shipped CLIP picks a caption's scene over its shape twin 71.5% of the time (chance 50%). 1,000 steps of 64
    # twins from it: 75.2% with the text tower frozen, 79.8% with it trained (session 30, docs/models.md; not
    # shipped). 0 = plain CLIP training.
    shape_negatives: int = 0


def shape_twin_batch(n: int, rng: random.Random) -> tuple[np.ndarray, list[str]]:
    """``n`` training scenes and their shape twins, rendered: pixels (2n, H, W, 3) uint8 and captions, each scene
    next to its twin."""
    scenes = [s for pair in world.shape_twins(rng, n, "train") for s in pair]
    return np.stack([np.asarray(world.render(s)) for s in scenes]), [s.caption for s in scenes]


def _clip_to_train(run: Path, cfg: ClipTrainConfig):
    """(tokenizer, CLIP): a new model on the run's tokenizer, or ``cfg.base``, with ``cfg.text_tower`` frozen in."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(cfg.seed)
    if not cfg.base:
        if cfg.text_tower:
            raise UserError("train clip: --text-tower replaces the text tower of a trained CLIP; give it as --base")
        tokenizer = _tokenizer(run)
        return tokenizer, CLIPModel(models.clip_config(tokenizer, width=cfg.width, layers=cfg.layers))
    path = models.resolve(cfg.base, "clip")
    tokenizer, model = CLIPTokenizer.from_pretrained(path), CLIPModel.from_pretrained(path, dtype=torch.float32)
    if cfg.text_tower:
        tower = CLIPTextModel.from_pretrained(cfg.text_tower, dtype=torch.float32)
        if tower.config.hidden_size != model.config.text_config.hidden_size:
            raise UserError(f"text tower {cfg.text_tower} is {tower.config.hidden_size} wide, CLIP {cfg.base} "
                            f"{model.config.text_config.hidden_size}")
        model.text_model.load_state_dict(tower.state_dict())
        model.text_model.requires_grad_(False)
    return tokenizer, model


def train_clip(run: Path, cfg: ClipTrainConfig) -> None:
    from transformers import CLIPProcessor

    t0 = time.time()
    tokenizer, model = _clip_to_train(run, cfg)
    data = training_scenes(run, cfg.n_scenes, cfg.seed)
    pixels, captions = data["pixels"], data["captions"]

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(pixels), (cfg.batch_size,), generator=gen).numpy()
        rng = random.Random(step)
        texts = [partial_caption(captions[i], rng) if rng.random() < cfg.partial_captions else captions[i] for i in idx]
        images = pixels[idx]
        if cfg.shape_negatives:
            twin_pixels, twin_texts = shape_twin_batch(cfg.shape_negatives, random.Random(f"clip-twins:{cfg.seed}:{step}"))
            images, texts = np.concatenate([images, twin_pixels]), texts + twin_texts
        tok = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")  # causal: padding is inert
        out = model(input_ids=tok.input_ids.to(model.device), attention_mask=tok.attention_mask.to(model.device),
                    pixel_values=to_clip_input(images).to(model.device), return_loss=True)
        return out.loss

    model = train_loop(cfg, model, loss_fn, "clip")
    if not is_main_process():  # under `accelerate launch` one process writes the model
        return
    final = Path(run) / "clip" / "final"
    model.save_pretrained(final)
    CLIPProcessor(image_processor=models.clip_image_processor(world.IMAGE_SIZE), tokenizer=tokenizer).save_pretrained(final)
    _record(run, "clip", cfg, time.time() - t0)


# ----------------------------------------------------------------------------------------------
# VAE


@dataclass
class VaeTrainConfig(LoopConfig):
    channels: tuple[int, ...] = (32, 64, 64)
    n_scenes: int = 40_000
    kl_weight: float = 1e-6  # as in LDM's KL-f8 autoencoder: the KL only keeps the latent bounded
    # vae-decoder only: which latent the decoder learns to decode. 'sample' (as LDM's autoencoders train, and as
    # sessions 2 and 8 did) draws from the posterior, whose std here is 0.34 against the means' 0.82 (session 24);
    # 'mode' decodes the posterior mean, the latent every diffusion model here is trained on and produces.
    decode_from: str = "sample"
    base: str = ""  # vae-decoder only: a pipeline folder or hub id whose vae/ to fine-tune; default the run's own


def _vae_loss(vae, x: torch.Tensor, gen: torch.Generator, kl_weight: float, decode_from: str = "sample"
              ) -> torch.Tensor:
    posterior = vae.encode(x).latent_dist
    z = posterior.mode() if decode_from == "mode" else posterior.sample(generator=gen)
    rec = vae.decode(z).sample
    return F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x) + kl_weight * posterior.kl().mean()


def train_vae(run: Path, cfg: VaeTrainConfig) -> None:
    from diffusers import AutoencoderKL

    if cfg.base:
        raise UserError("train vae trains a VAE from scratch; to continue one, fine-tune its decoder with "
                        "`train vae-decoder --base FOLDER`")
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**models.vae_config(tuple(cfg.channels)))
    pixels = training_scenes(run, cfg.n_scenes, cfg.seed)["pixels"]

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(pixels), (cfg.batch_size,), generator=gen).numpy()
        return _vae_loss(vae, to_unit(pixels[idx]).to(vae.device), gen, cfg.kl_weight)

    vae = train_loop(cfg, vae, loss_fn, "vae").eval()
    if not is_main_process():  # under `accelerate launch` one process writes the model
        return
    # Stable Diffusion's scaling_factor (0.18215) is 1 / std of the latents over training images,
    # so that scaled latents have unit variance like the diffusion noise; computed the same way here.
    with torch.no_grad():
        sample = pixels[:4096]
        z = torch.cat([vae.encode(to_unit(sample[i:i + 256]).to(vae.device)).latent_dist.sample()
                       for i in range(0, len(sample), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / z.flatten().std()))
    vae.save_pretrained(Path(run) / "vae" / "final")
    _record(run, "vae", cfg, time.time() - t0)


def train_vae_decoder(run: Path, cfg: VaeTrainConfig) -> None:
    """Fine-tune only the VAE decoder (as SD's ft-MSE VAE did): the encoder, hence every latent the
    diffusion models were trained on, stays exactly the same, while reconstructions get sharper.

    ``cfg.base`` continues a shipped VAE (e.g. src/pairedit/bundled/ip2p); ``export --vae-only`` puts the
    result into a bundle's pipelines.
    """
    from diffusers import AutoencoderKL

    if cfg.decode_from not in ("sample", "mode"):
        raise UserError(f"decode_from must be 'sample' or 'mode', not {cfg.decode_from!r}")
    t0 = time.time()
    vae = _base_vae(cfg.base) if cfg.base else AutoencoderKL.from_pretrained(_final(run, "vae"))
    for module in (vae.encoder, vae.quant_conv):
        module.requires_grad_(False)
    pixels = training_scenes(run, cfg.n_scenes, cfg.seed)["pixels"]

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(pixels), (cfg.batch_size,), generator=gen).numpy()
        return _vae_loss(vae, to_unit(pixels[idx]).to(vae.device), gen, 0.0, cfg.decode_from)

    vae = train_loop(cfg, vae, loss_fn, "vae_decoder").eval()
    if not is_main_process():  # under `accelerate launch` one process writes the model
        return
    vae.save_pretrained(Path(run) / "vae_decoder" / "final")
    _record(run, "vae_decoder", cfg, time.time() - t0)


def trained_vae_path(run: Path) -> Path:
    """The decoder-fine-tuned VAE when there is one, else the VAE (their encoders are identical)."""
    tuned = Path(run) / "vae_decoder" / "final"
    return tuned if tuned.exists() else _final(run, "vae")


@torch.no_grad()
def encode_pixels(vae, pixels: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Latent modes (unscaled) of uint8 images, in batches."""
    return torch.cat([vae.encode(to_unit(pixels[i:i + batch]).to(vae.device)).latent_dist.mode().cpu()
                      for i in range(0, len(pixels), batch)])


def _cached_latents(run: Path, name: str, vae,
                    arrays: Callable[[], dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """VAE latent modes of ``arrays()`` (read only when the cache ``data/<name>.safetensors`` is missing)."""
    return _cached_tensors(run, name, lambda: {k: encode_pixels(vae, v).to(torch.float16)
                                               for k, v in arrays().items()})


def _cached_tensors(run: Path, name: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``compute()``, cached as ``data/<name>.safetensors`` (computed only when that file is missing)."""
    from safetensors.torch import load_file, save_file

    path = Path(run) / "data" / f"{name}.safetensors"
    if path.exists():
        return load_file(path)
    out = {k: v.contiguous() for k, v in compute().items()}
    save_file(out, path)
    return out


PAIRS_PER_FILE = 60_000  # edit pairs per cached file (1.5 GB of pixels); a larger --n-pairs adds files


def training_scenes(run: Path, n: int, seed: int, vae=None) -> dict:
    """The first ``n`` training scenes (pixels, captions), with their VAE latents when ``vae`` is given.

    Under ``accelerate launch`` the main process draws and encodes whatever is missing first; the others
    then read the files (the same holds for ``training_pairs``).
    """
    with main_process_first():
        data = scenes_dataset(Path(run) / "data" / "scenes.npz", n, seed)
        if vae is not None:
            data["latents"] = _cached_latents(run, "scene_latents", vae, lambda: {"scenes": data["pixels"]})["scenes"]
    return data


def changed_cells(before: np.ndarray, after: np.ndarray, latent_size: int, threshold: int = 8) -> torch.Tensor:
    """Which latent cells an edit changes: (n, 1, h, w) bool, a cell being True when any pixel it covers moved by
    more than ``threshold`` (of 255) in any channel. Latent differences cannot say it: the encoder's receptive
    field spreads a small edit over most of the 16×16 latent."""
    return pixels_to_cells(np.abs(after.astype(np.int16) - before.astype(np.int16)).max(-1) > threshold, latent_size)


def pixels_to_cells(mask: np.ndarray, latent_size: int) -> torch.Tensor:
    """(n, H, W) bool pixels → (n, 1, h, w) bool latent cells, a cell being True when any pixel it covers is."""
    return torch.cat([F.adaptive_max_pool2d(torch.from_numpy(mask[i:i + 4096]).float()[:, None], latent_size).bool()
                      for i in range(0, len(mask), 4096)])


def _changed_cells_of_file(args: tuple, kind: str, latent_size: int) -> torch.Tensor:
    pixels = pairs_dataset(*args, kind=kind)
    return changed_cells(pixels["before"], pixels["after"], latent_size)


def _object_cells_of_file(args: tuple, kind: str, latent_size: int) -> torch.Tensor:
    return pixels_to_cells(object_pixels(*args, kind=kind), latent_size)


# Per-pair latent-cell masks the InstructPix2Pix trainer can weight its loss with (IP2PTrainConfig).
CELL_MASKS = {"changed": _changed_cells_of_file, "objects": _object_cells_of_file}


def training_pairs(run: Path, n: int, seed: int, vae, binding: int = 0, compound: int = 0,
                   cells: tuple[str, ...] = (), twins: int = 0, absent: int = 0) -> tuple[list, dict[str, torch.Tensor]]:
    """The first ``n`` training pairs, then ``binding`` pairs that name one object of a busy scene,
    ``compound`` pairs with two edits in one instruction and ``twins`` pairs that come as binding twins (two
    edits of one scene naming different objects) and ``absent`` pairs whose edit names a shape the scene lacks
    (after = before): their edits and VAE latents (before, after), from
    files of ``PAIRS_PER_FILE`` pairs. A larger count adds files and keeps the earlier pairs as they were.
    ``cells`` adds per-pair latent-cell masks named in ``CELL_MASKS`` (cached next to the latents): "changed"
    (``changed_cells``) and "objects" (the cells of every object in the before- or after-scene)."""
    edits, latents = [], []
    with main_process_first():
        for prefix, count, kind in (("pair", n, "usual"), ("binding_pair", binding, "binding"),
                                    ("compound_pair", compound, "compound"), ("twin_pair", twins, "twins"),
                                    ("absent_pair", absent, "absent")):
            for part, start in enumerate(range(0, count, PAIRS_PER_FILE)):
                suffix = f"_{part}" if part else ""
                size = min(PAIRS_PER_FILE, count - start)
                args = (Path(run) / "data" / f"{prefix}s{suffix}.npz", size, seed, part)
                edits += pairs_dataset(*args, pixels=False, kind=kind)["edits"]
                lat = _cached_latents(run, f"{prefix}_latents{suffix}", vae, lambda args=args, k=kind: {
                    k2: v for k2, v in pairs_dataset(*args, kind=k).items() if k2 in ("before", "after")})
                for name in cells:
                    mask = partial(CELL_MASKS[name], args, kind, lat["after"].shape[-1])
                    lat |= _cached_tensors(run, f"{prefix}_{name}{suffix}", lambda name=name, mask=mask: {name: mask()})
                latents.append({k: v[:size] for k, v in lat.items()})  # a file may hold more than asked for
    return edits, {k: torch.cat([lat[k] for lat in latents]) for k in ("before", "after", *cells)}


# ----------------------------------------------------------------------------------------------
# Diffusion (text-to-image and InstructPix2Pix share the loss)


def denoising_loss(unet, scheduler, z0: torch.Tensor, text: torch.Tensor, gen: torch.Generator,
                   image_cond: torch.Tensor | None = None, snr_gamma: float | None = None,
                   cell_weight: torch.Tensor | None = None) -> torch.Tensor:
    """‖ε − ε_θ(z_t, t, c)‖² with t ~ U{0..T−1} (LDM Eq. 2; InstructPix2Pix Eq. 2 when ``image_cond`` is given).

    ``snr_gamma`` weights each sample by min(SNR(t), γ) / SNR(t) (Min-SNR-γ, Hang et al. 2023, for
    ε-prediction): the nearly-clean timesteps, whose ε error is large, mostly irreducible and matters
    little to a sample, stop dominating the gradient. None = the unweighted loss of the papers.
    ``cell_weight`` (B, 1, h, w) weights the latent cells within each sample (see ``denoising_errors``).
    Noise and timesteps come from the (CPU) generator, so a run is the same on any device.
    """
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=gen)
    per_sample = denoising_errors(unet, scheduler, z0, text, noise, t, image_cond, cell_weight)
    if snr_gamma is None:
        return per_sample.mean()
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t).to(per_sample.device)
    return (per_sample * snr.clamp(max=snr_gamma) / snr).mean()


def denoising_errors(unet, scheduler, z0: torch.Tensor, text: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                     image_cond: torch.Tensor | None = None, cell_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample ‖ε − ε_θ(z_t, t, c)‖² (mean over latent elements) for given noise and timesteps.

    With ``cell_weight`` (B, 1, h, w) the mean over cells is weighted, normalised per sample, so that each sample
    keeps the same total weight and only the share of its cells changes."""
    z_t = scheduler.add_noise(z0.cpu(), noise, t)
    x = z_t if image_cond is None else torch.cat([z_t, image_cond.cpu()], dim=1)
    x, t, text, noise = (v.to(unet.device) for v in (x, t, text, noise))
    err = F.mse_loss(unet(x, t, encoder_hidden_states=text).sample.float(), noise, reduction="none")
    if cell_weight is None:
        return err.mean(dim=tuple(range(1, err.ndim)))
    w = cell_weight.to(err.device).expand_as(err)
    return (err * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))


def encode_texts(text_encoder, tokenizer, texts: list[str]) -> torch.Tensor:
    """The text encoder's last hidden states for ``texts``, padded to the tokenizer's length, as SD conditions."""
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


_embed = torch.no_grad()(encode_texts)  # for a frozen text encoder


class FrozenTextEmbeddings:
    """The frozen text encoder's outputs, memoised per sentence.

    The world has about 700 distinct single-edit instructions, so after the first steps a batch's conditioning
    is a lookup (encoding it was ~10% of an InstructPix2Pix step on this CPU). Compound instructions and
    captions are too many to keep: when full, the memo starts over.
    """

    def __init__(self, text_encoder, tokenizer, max_items: int = 10_000):
        self.text_encoder, self.tokenizer, self.max_items = text_encoder, tokenizer, max_items
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        unique = list(dict.fromkeys(texts))
        missing = [t for t in unique if t not in self.cache]
        if missing:
            if len(self.cache) + len(missing) > self.max_items:  # full: start over with this batch's sentences
                self.cache.clear()
                missing = unique
            self.cache.update(zip(missing, _embed(self.text_encoder, self.tokenizer, missing)))
        return torch.stack([self.cache[t] for t in texts])


@dataclass
class T2ITrainConfig(LoopConfig):
    channels: tuple[int, ...] = (64, 128, 128)
    n_scenes: int = 40_000
    text_dropout: float = 0.1  # classifier-free guidance needs an unconditional model (Ho & Salimans 2022)
    ema_decay: float | None = 0.999
    snr_gamma: float | None = None  # Min-SNR-γ loss weight (γ = 5 in Hang et al. 2023); None = unweighted, as in LDM
    base: str = ""  # continue from a text-to-image checkpoint (folder or hub id); '' = a new UNet on the run's parts


def _base_vae(base: str):
    """The VAE of a stock SD / InstructPix2Pix folder or hub id, in fp32."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(models.resolve(base, "sd"), subfolder="vae", dtype=torch.float32)


def _frozen_parts(run: Path, base: str):
    """(tokenizer, text encoder, VAE, base UNet or None): from a stock SD folder / hub id, or from the run."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    device = training_device()  # the frozen parts run where the UNet trains
    if base:
        path = models.resolve(base, "sd")
        return (CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
                CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=torch.float32).eval().to(device),
                _base_vae(base).eval().to(device),
                UNet2DConditionModel.from_pretrained(path, subfolder="unet", dtype=torch.float32))
    return (_tokenizer(run),
            models.text_encoder_from_clip(CLIPModel.from_pretrained(_final(run, "clip"))).eval().to(device),
            AutoencoderKL.from_pretrained(_final(run, "vae")).eval().to(device), None)


def train_t2i(run: Path, cfg: T2ITrainConfig) -> None:
    """Latent diffusion on (image, caption) with the frozen CLIP text tower; ``cfg.base`` continues a checkpoint."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    t0 = time.time()
    tokenizer, text_encoder, vae, unet = _frozen_parts(run, cfg.base)
    _record_base(run, "t2i", cfg.base)
    data = training_scenes(run, cfg.n_scenes, cfg.seed, vae)
    latents, captions, sf = data["latents"], data["captions"], vae.config.scaling_factor
    torch.manual_seed(cfg.seed)
    if unet is None:
        unet = UNet2DConditionModel(**models.unet_config(tuple(cfg.channels), text_encoder.config.hidden_size))
    unet = models.training_attention(unet.to(text_encoder.device), cfg.mixed_precision)
    scheduler = DDPMScheduler.from_config(models.noise_schedule_config())

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(latents), (cfg.batch_size,), generator=gen)
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.text_dropout
        texts = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
        return denoising_loss(unet, scheduler, latents[idx].float() * sf, _embed(text_encoder, tokenizer, texts), gen,
                              snr_gamma=cfg.snr_gamma)

    unet = train_loop(cfg, unet, loss_fn, "t2i")
    if not is_main_process():  # under `accelerate launch` one process writes the model
        return
    _save_final(unet, run, "t2i", cfg.steps)
    _record(run, "t2i", cfg, time.time() - t0)


@dataclass
class IP2PTrainConfig(LoopConfig):
    base: str = ""  # checkpoint to start from (SD folder, hub id, or an InstructPix2Pix folder to continue); '' = the run's
    n_pairs: int = 60_000
    # Extra pairs that name one object of a scene with two or three (world.binding_pair), drawn uniformly
    # with the others; 0 = the paper's recipe (pairs drawn as the data generator draws them).
    binding_pairs: int = 0
    # Extra pairs with a scene-wide and an object edit in one instruction (world.compound_pair), so that
    # instructions compose, as a VISII hybrid instruction needs; 0 = none.
    compound_pairs: int = 0
    # Extra pairs drawn as binding twins (world.binding_twins: one busy scene, one edit aimed at two different
    # objects), a counterfactual the UNet can only fit by reading the shape word; 0 = none. The twins sit next
    # to each other in the pool and are sampled independently, like every pair; wordings are drawn per batch.
    twin_pairs: int = 0
    # Extra pairs whose object edit names a shape the scene lacks, the after-image the unchanged scene
    # (world.absent_pair): naming an object that is not there does nothing, so the UNet has to look for the named
    # shape before it edits. Session 30 found that without them the model's loss on one example pair prefers a
    # shape word absent from the scene to the true one in 7 of 16 held-out object edits (docs/visii.md); 0 = none.
    absent_pairs: int = 0
    # InstructPix2Pix §3.2.1: "randomly set c_I = ∅_I for 5% of examples, c_T = ∅_T for 5% of
    # examples, and both for 5% of examples".
    drop_image: float = 0.05
    drop_text: float = 0.05
    drop_both: float = 0.05
    ema_decay: float | None = 0.999
    snr_gamma: float | None = None  # Min-SNR-γ loss weight (γ = 5 in Hang et al. 2023); None = unweighted, as in §3.2
    resolution: int = field(default=world.IMAGE_SIZE)
    # InstructPix2Pix §3.2 fine-tunes the UNet only and keeps SD's text encoder frozen (False). True optimises
    # the text encoder with the UNet (same optimiser, learning rate and EMA), and the empty prompt of the
    # condition dropout is encoded by the moving encoder. The model's text encoder then no longer equals
    # CLIP's text tower until CLIP is refitted to it (ClipTrainConfig.text_tower; docs/models.md, sessions 20-21).
    train_text_encoder: bool = False
    # λ: the latent cells an edit changes (``changed_cells``) weigh 1 + λ in each pair's loss, normalised per
    # pair. InstructPix2Pix §3.2 uses the plain loss (0). An object edit changes ≈ 10% of the cells, so its loss
    # is mostly about copying the rest; λ = 4 gives the changed cells ≈ 36% of it. Measured in session 23
    # (docs/models.md): gate +1.4 points (p = 0.42), binding −2.5 (p = 0.03), so not used for the bundle.
    edit_region_weight: float = 0.0
    # λ_obj: the latent cells of every object in the before- or after-scene weigh 1 + λ_obj (added to the above):
    # the named object, where the edit must happen, and the others, where it must not. 0 = the paper's loss.
    # λ_obj = 3 (objects ≈ 60% of a pair's loss) is under test (docs/models.md, session 23).
    object_weight: float = 0.0


class UNetAndTextEncoder(torch.nn.Module):
    """The InstructPix2Pix UNet and its text encoder as one model, optimised together
    (``IP2PTrainConfig.train_text_encoder``). Checkpoints keep the weights under ``unet.`` and ``text_encoder.``."""

    def __init__(self, unet, text_encoder) -> None:
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def save_config(self, folder: Path) -> None:
        """Both configs, so that ``snapshot_unet`` can rebuild the pair from a checkpoint alone."""
        self.unet.save_config(folder)
        self.text_encoder.config.save_pretrained(Path(folder) / TEXT_ENCODER)


TEXT_ENCODER = "text_encoder"  # <stage>/final/text_encoder: the jointly trained text encoder, next to the UNet


def trained_text_encoder(final: Path, dtype: torch.dtype = torch.float32):
    """The text encoder a ``train_text_encoder`` run saved next to its UNet in ``final``, or None (frozen run)."""
    from transformers import CLIPTextModel

    path = Path(final) / TEXT_ENCODER
    return CLIPTextModel.from_pretrained(path).to(dtype) if path.exists() else None


def train_ip2p(run: Path, cfg: IP2PTrainConfig) -> None:
    """InstructPix2Pix §3.2: a text-to-image UNet with ``conv_in`` widened to 8 channels (new weights
    zero), trained on (before, instruction, after) with the condition dropout of §3.2.1."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    t0 = time.time()
    tokenizer, text_encoder, vae, unet = _frozen_parts(run, cfg.base)
    _record_base(run, "ip2p", cfg.base)
    if unet is None:
        unet = UNet2DConditionModel.from_pretrained(_final(run, "t2i"))
    unet = models.training_attention(models.widen_conv_in(unet, 8).to(text_encoder.device), cfg.mixed_precision)
    weights = {"changed": cfg.edit_region_weight, "objects": cfg.object_weight}
    weights = {k: w for k, w in weights.items() if w}
    edits, lat = training_pairs(run, cfg.n_pairs, cfg.seed, vae, cfg.binding_pairs, cfg.compound_pairs, tuple(weights),
                                cfg.twin_pairs, cfg.absent_pairs)
    sf = vae.config.scaling_factor
    scheduler = DDPMScheduler.from_config(models.noise_schedule_config())
    if cfg.train_text_encoder:
        model = UNetAndTextEncoder(unet, text_encoder.requires_grad_(True))
        embed = lambda texts: encode_texts(model.text_encoder, tokenizer, texts)  # noqa: E731
    else:
        model, embed = unet, FrozenTextEmbeddings(text_encoder, tokenizer)

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(edits), (cfg.batch_size,), generator=gen)
        rng = random.Random(step)
        texts = [edits[i].instruction(rng) for i in idx.tolist()]
        image_cond = lat["before"][idx].float()  # unscaled mode, as the diffusers pipeline conditions on it
        r = torch.rand(cfg.batch_size, generator=gen)
        no_text = r < cfg.drop_text
        no_image = (r >= cfg.drop_text) & (r < cfg.drop_text + cfg.drop_image)
        both = (r >= cfg.drop_text + cfg.drop_image) & (r < cfg.drop_text + cfg.drop_image + cfg.drop_both)
        text = embed(["" if drop else t for t, drop in zip(texts, (no_text | both).tolist())])  # c_T = ∅_T: ""
        image_cond = torch.where((no_image | both).view(-1, 1, 1, 1), torch.zeros_like(image_cond), image_cond)
        weight = 1.0 + sum(w * lat[k][idx].float() for k, w in weights.items()) if weights else None
        return denoising_loss(unet, scheduler, lat["after"][idx].float() * sf, text, gen, image_cond, cfg.snr_gamma,
                              weight)

    model = train_loop(cfg, model, loss_fn, "ip2p")
    if not is_main_process():  # under `accelerate launch` one process writes the model
        return
    final = _save_final(unet, run, "ip2p", cfg.steps)
    if cfg.train_text_encoder:
        text_encoder.save_pretrained(final / TEXT_ENCODER)
    _record(run, "ip2p", cfg, time.time() - t0)


def _record_base(run: Path, stage: str, base: str) -> None:
    """Remember the checkpoint a stage started from and how long it had trained, for ``trained.json``."""
    if base:
        write_json(Path(run) / stage / "base.json", {"base": base, "base_steps": models.trained_steps(base, "sd") or 0})


def _save_final(unet, run: Path, stage: str, step: int) -> Path:
    """``<stage>/final`` with ``trained.json`` saying after how many optimisation steps (read by ``export``):
    this run's plus, for a run started from a ``--base`` that records its own, the base's."""
    final = Path(run) / stage / "final"
    unet.save_pretrained(final)
    base_json = Path(run) / stage / "base.json"
    trained = {"step": step}
    if base_json.exists():
        base = json.loads(base_json.read_text())
        trained = {"step": base["base_steps"] + step, "steps_this_run": step, "base": base["base"]}
    write_json(final / "trained.json", trained)
    return final


def snapshot_unet(run: Path, stage: str) -> Path:
    """Write ``<stage>/final`` from the latest checkpoint's EMA weights, without stopping the training.

    The training run keeps going from its checkpoints; the snapshot is what ``export`` and ``eval`` read.
    """
    from diffusers import UNet2DConditionModel

    stage_dir = Path(run) / stage
    ckpt = latest_checkpoint(stage_dir / "checkpoints")
    if ckpt is None:
        raise models.ModelNotAvailable(f"{stage_dir / 'checkpoints'} has no checkpoint to snapshot")
    config = ckpt / "config.json" if (ckpt / "config.json").exists() else stage_dir / "final" / "config.json"
    if not config.exists():
        raise models.ModelNotAvailable(f"{ckpt} has no model config and {stage_dir / 'final'} does not exist")
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config))
    step = json.loads((ckpt / "state.json").read_text())["step"]
    if not (ckpt / TEXT_ENCODER / "config.json").exists():
        return _save_final(load_weights(ckpt, unet), run, stage, step)
    from transformers import CLIPTextConfig, CLIPTextModel  # a run with train_text_encoder: both models

    pair = load_weights(ckpt, UNetAndTextEncoder(unet, CLIPTextModel(CLIPTextConfig.from_pretrained(ckpt / TEXT_ENCODER))))
    final = _save_final(pair.unet, run, stage, step)
    pair.text_encoder.save_pretrained(final / TEXT_ENCODER)
    return final


# ----------------------------------------------------------------------------------------------
# Export


def deepen_ip2p(run: Path, dest: Path) -> Path:
    """``dest/ip2p``: the run's InstructPix2Pix pipeline in fp32 with its UNet deepened to two layers per block.

    The deepened UNet computes the same function (``models.deepen_unet``); ``pairedit train ip2p --run NEWRUN
    --base dest/ip2p`` trains it on with the added capacity.
    """
    from diffusers import UNet2DConditionModel

    export_bundle(run, dest, dtype=torch.float32, stages=("ip2p",))
    folder = Path(dest) / "ip2p"
    models.deepen_unet(UNet2DConditionModel.from_pretrained(folder / "unet")).save_pretrained(folder / "unet")
    return folder


def export_unet(run: Path, stage: str = "ip2p", dest: Path = models.BUNDLED_DIR, dtype: torch.dtype = torch.float16
                ) -> Path:
    """Replace only the UNet (and its ``trained.json``) of an existing bundle folder with the run's.

    For a run that continued a bundled model (``--base src/pairedit/bundled/ip2p``): it has no tokenizer,
    CLIP or VAE of its own, and the bundle's stay as they are.
    """
    from diffusers import UNet2DConditionModel

    folder = Path(dest) / models.UNET_FOLDER[stage]
    if not (folder / "model_index.json").exists():
        raise models.ModelNotAvailable(f"{folder} is not a pipeline folder to put the UNet in")
    final = _final(run, stage)
    UNet2DConditionModel.from_pretrained(final).to(dtype).save_pretrained(folder / "unet")
    text_encoder = trained_text_encoder(final, dtype)
    if text_encoder is not None:  # trained with the UNet: it goes along
        text_encoder.save_pretrained(folder / "text_encoder")
    write_json(folder / "trained.json", json.loads((final / "trained.json").read_text()))
    return folder


def export_vae(run: Path, dest: Path = models.BUNDLED_DIR, dtype: torch.dtype = torch.float16) -> list[Path]:
    """Replace the VAE of an existing bundle's pipelines with the run's fine-tuned one (``vae-decoder``).

    Its encoder must be the bundle's: the diffusion models were trained on that encoder's latents.
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(_final(run, "vae_decoder")).to(dtype)
    written = []
    for folder in models.UNET_FOLDER.values():
        target = Path(dest) / folder / "vae"
        if not target.exists():
            continue
        old = AutoencoderKL.from_pretrained(target).to(dtype).encoder.state_dict()
        if any(not torch.equal(old[k], v) for k, v in vae.encoder.state_dict().items()):
            raise UserError(f"{target}: its encoder differs from the run's, so the latents the UNet was trained on "
                            "would change; fine-tune that VAE's decoder instead (`train vae-decoder --base ...`)")
        vae.save_pretrained(target)
        written.append(target)
    return written


def export_clip(run: Path, dest: Path = models.BUNDLED_DIR, dtype: torch.dtype = torch.float16) -> Path:
    """Replace the CLIP of an existing bundle folder with the run's, and make its text tower the text encoder
    of the bundle's pipelines, as in Stable Diffusion (for a CLIP refit with ``ClipTrainConfig.text_tower``)."""
    from transformers import CLIPModel, CLIPProcessor

    final = _final(run, "clip")
    clip = CLIPModel.from_pretrained(final).to(dtype)
    clip.save_pretrained(Path(dest) / "clip")
    CLIPProcessor.from_pretrained(final).save_pretrained(Path(dest) / "clip")
    tower = models.text_encoder_from_clip(clip).to(dtype)
    for folder in models.UNET_FOLDER.values():
        if (Path(dest) / folder / "model_index.json").exists():
            tower.save_pretrained(Path(dest) / folder / "text_encoder")
    return Path(dest) / "clip"


def export_bundle(run: Path, dest: Path = models.BUNDLED_DIR, dtype: torch.dtype = torch.float16,
                  stages: tuple[str, ...] = ("clip", "sd", "ip2p")) -> None:
    """Assemble the trained parts into the three stock folders the loader resolves as 'bundled'."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPModel, CLIPProcessor

    run, dest = Path(run), Path(dest)
    tokenizer = _tokenizer(run)
    clip = CLIPModel.from_pretrained(_final(run, "clip")).eval()
    text_encoder = models.text_encoder_from_clip(clip).to(dtype)
    common = dict(tokenizer=tokenizer, text_encoder=text_encoder, safety_checker=None, feature_extractor=None,
                  requires_safety_checker=False)
    if "clip" in stages:
        clip.to(dtype).save_pretrained(dest / "clip")
        CLIPProcessor.from_pretrained(_final(run, "clip")).save_pretrained(dest / "clip")
    vae = AutoencoderKL.from_pretrained(trained_vae_path(run)).to(dtype)
    if "sd" in stages:
        unet = UNet2DConditionModel.from_pretrained(_final(run, "t2i")).to(dtype)
        StableDiffusionPipeline(vae=vae, unet=unet, scheduler=DDIMScheduler.from_config(models.noise_schedule_config()),
                                **common).save_pretrained(dest / "sd")
    if "ip2p" in stages:
        final = _final(run, "ip2p")
        unet = UNet2DConditionModel.from_pretrained(final).to(dtype)
        scheduler = EulerAncestralDiscreteScheduler.from_config(models.noise_schedule_config())
        own_encoder = trained_text_encoder(final, dtype)  # its own when trained with it, else CLIP's tower
        parts = common if own_encoder is None else dict(common, text_encoder=own_encoder)
        pipe = StableDiffusionInstructPix2PixPipeline(vae=vae, unet=unet, scheduler=scheduler, **parts)
        pipe.save_pretrained(dest / "ip2p")
        # Every instruction of the world (held-out combinations included): VISII's init="bank".
        (dest / "ip2p" / models.BANK_FILE).write_text("\n".join(world.all_instructions()) + "\n")
    for stage, folder in models.UNET_FOLDER.items():  # how long each UNet trained, for reports
        trained = Path(run) / stage / "final" / "trained.json"
        if folder in stages and trained.exists():
            write_json(dest / folder / "trained.json", json.loads(trained.read_text()))
