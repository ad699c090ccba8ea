"""Text-driven editing: InstructPix2Pix with a written instruction, and SDEdit with an after-caption.

- ``ip2p_edit`` runs the shared InstructPix2Pix sampler (``sampling.ip2p_sample``, Euler-ancestral
  with the two guidance scales of IP2P Eq. 3) with a text instruction as the conditioning.
- ``sdedit`` is SDEdit (Meng et al. 2022) on a text-to-image model: noise the image latent to
  t = strength·T and denoise it with classifier-free guidance towards the after-caption. diffusers'
  ``StableDiffusionImg2ImgPipeline`` does exactly that (encode, ``add_noise`` at the start timestep,
  CFG denoising loop), so it is reused, built from the same components with a DDIM scheduler.

Command line::

    pairedit edit photo.png "make it red" -o out/
    pairedit sdedit photo.png "a red circle at night" --strength 0.6 -o out/
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from .errors import UserError


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"steps must be a positive whole number, got {steps!r}")


def _check_scale(name: str, value: float) -> None:
    if not value >= 0:  # also refuses NaN
        raise UserError(f"{name} must be ≥ 0, got {value}")


@dataclass(frozen=True)
class EditConfig:
    """InstructPix2Pix sampling settings.

    The paper samples with 100 Euler-ancestral steps (App. A.3); 20 steps of the same sampler cost a
    fifth and score within noise of it on the bundled model (edit success 78.2% at 20, 80.7% at 50,
    79.6% at 100 steps on the gate's 280 held-out pairs; docs/models.md, session 31). s_T = 7.5 is
    the text guidance the paper fixes in its comparisons (Fig. 8); s_I = 1.5 is the top of the 1–1.5
    range it recommends (§4).
    """

    steps: int = 20
    s_text: float = 7.5
    s_image: float = 1.5
    seed: int = 0

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        _check_scale("text guidance", self.s_text)
        _check_scale("image guidance", self.s_image)


@dataclass(frozen=True)
class SDEditConfig:
    """SDEdit settings: how far to noise (strength) and how to denoise (DDIM steps, CFG scale).

    strength is the fraction of the diffusion the image is noised to (t0 = strength·T): low values
    keep the input, high values follow the caption. 0.75 is the middle of the 0.3–0.9 range over
    which InstructPix2Pix sweeps SDEdit (IP2P Fig. 8). 50 DDIM steps and ω = 7.5 are Stable
    Diffusion's defaults (also the text guidance of IP2P Fig. 8).
    """

    strength: float = 0.75
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.strength <= 1:
            raise UserError(f"strength must be in (0, 1], got {self.strength}")
        _check_steps(self.steps)
        _check_scale("guidance", self.guidance)
        if int(self.steps * self.strength) < 1:
            raise UserError(f"strength {self.strength} × {self.steps} steps leaves no denoising step; "
                            "raise --strength or --steps")


def resolution(pipe) -> int:
    """The image size the pipeline's UNet was built for (latent sample size × VAE downsampling)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def ip2p_edit(pipe, images: list[Image.Image], instruction: str, steps: int = 20, s_text: float = 7.5,
              s_image: float = 1.5, seed: int = 0) -> list[Image.Image]:
    """Edit each image with a written instruction (InstructPix2Pix, Eq. 3 guidance); returns PIL images.

    Images are fitted to the model's resolution (``images.fit``); each image is sampled with its own
    generator seeded with ``seed``, so an image's result does not depend on the others in the list.
    """
    from .images import fit, to_pil, to_tensor
    from .sampling import decode_latents, encode_image_condition, encode_text, ip2p_sample

    cfg = EditConfig(steps=steps, s_text=s_text, s_image=s_image, seed=seed)
    if pipe.unet.config.in_channels != 8:
        raise UserError("InstructPix2Pix editing needs an InstructPix2Pix checkpoint (8 input channels) such as "
                        f"timbrooks/instruct-pix2pix; this UNet takes {pipe.unet.config.in_channels}")
    device = pipe.unet.device
    cond = encode_text(pipe, instruction)  # c_T
    uncond = encode_text(pipe, "")  # ∅_T
    out = []
    for im in images:
        pixels = to_tensor(fit(im, resolution(pipe))).to(device)
        image_cond = encode_image_condition(pipe, pixels)  # c_I
        generator = torch.Generator().manual_seed(cfg.seed)
        latents = ip2p_sample(pipe, image_cond, cond, uncond, steps=cfg.steps, s_text=cfg.s_text,
                              s_image=cfg.s_image, generator=generator)
        out += to_pil(decode_latents(pipe, latents))
    return out


def sdedit(sd_pipe, images: list[Image.Image], after_caption: str, strength: float = 0.75, steps: int = 50,
           guidance: float = 7.5, seed: int = 0) -> list[Image.Image]:
    """SDEdit: noise each image's latent to t = strength·T, then DDIM-denoise it towards ``after_caption``.

    Runs diffusers' img2img pipeline, which is SDEdit, on the components of ``sd_pipe`` (no copies of
    the weights) with a DDIM scheduler made from the model's own noise schedule.
    """
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    from .images import fit

    cfg = SDEditConfig(strength=strength, steps=steps, guidance=guidance, seed=seed)
    if sd_pipe.unet.config.in_channels != 4:
        raise UserError("SDEdit needs a text-to-image checkpoint (4 input channels) such as "
                        f"runwayml/stable-diffusion-v1-5; this UNet takes {sd_pipe.unet.config.in_channels}")
    parts = dict(sd_pipe.components)
    parts["scheduler"] = DDIMScheduler.from_config(sd_pipe.scheduler.config)
    img2img = StableDiffusionImg2ImgPipeline(**parts, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    out = []
    for im in images:
        generator = torch.Generator().manual_seed(cfg.seed)
        result = img2img(prompt=after_caption, image=fit(im, resolution(sd_pipe)), strength=cfg.strength,
                         num_inference_steps=cfg.steps, guidance_scale=cfg.guidance, generator=generator,
                         output_type="pil")
        out += result.images
    return out


# ----------------------------------------------------------------------------------------------
# Command line


def output_names(paths: list[str]) -> list[str]:
    """One output file stem per input: the input's stem, prefixed by its position when stems repeat."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i:02d}-{s}" for i, s in enumerate(stems)]


def write_results(outdir: str, paths: list[str], inputs: list[Image.Image], outputs: list[Image.Image],
                  label: str) -> None:
    """Per-image PNGs ``OUTDIR/<stem>.png`` and ``OUTDIR/grid.png`` (rows: input | result)."""
    from .images import grid, save_image

    out = Path(outdir)
    for name, im in zip(output_names(paths), outputs):
        save_image(im, out / f"{name}.png", inputs=paths)
    rows = [[i.resize(o.size), o] for i, o in zip(inputs, outputs)]
    save_image(grid(rows, labels=["input", label]), out / "grid.png", inputs=paths)
    print(f"wrote {len(outputs)} image(s) and grid.png to {out}")


def _load_images(paths: list[str]) -> list[Image.Image]:
    from .images import load_image

    return [load_image(p) for p in paths]


def _run_edit(args: argparse.Namespace) -> int:
    from .cli import torch_dtype
    from .models import load_ip2p

    cfg = EditConfig(steps=args.steps, s_text=args.guidance, s_image=args.image_guidance, seed=args.seed)
    images = _load_images(args.images)
    pipe = load_ip2p(args.model, device=args.device, dtype=torch_dtype(args.dtype))
    edited = ip2p_edit(pipe, images, args.instruction, **asdict(cfg))
    write_results(args.output, args.images, images, edited, label=args.instruction)
    return 0


def _run_sdedit(args: argparse.Namespace) -> int:
    from .cli import torch_dtype
    from .models import load_sd

    cfg = SDEditConfig(strength=args.strength, steps=args.steps, guidance=args.guidance, seed=args.seed)
    images = _load_images(args.images)
    pipe = load_sd(args.model, device=args.device, dtype=torch_dtype(args.dtype))
    edited = sdedit(pipe, images, args.caption, **asdict(cfg))
    write_results(args.output, args.images, images, edited, label=args.caption)
    return 0


def add_cli(sub) -> None:
    """Register ``pairedit edit`` and ``pairedit sdedit``."""
    from .cli import add_model_args

    e, s = EditConfig(), SDEditConfig()
    p = sub.add_parser(
        "edit", help="edit images with a written instruction (InstructPix2Pix)",
        description="Edit each IMAGE with a written INSTRUCTION using InstructPix2Pix (Brooks et al. 2023). "
                    "Writes OUTDIR/<name>.png per image and OUTDIR/grid.png (input | edited).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to edit")
    p.add_argument("instruction", metavar="INSTRUCTION", help='the edit, e.g. "make the circle red"')
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the edited images")
    p.add_argument("--steps", type=int, default=e.steps,
                   help=f"Euler-ancestral sampling steps (default: {e.steps}; the paper uses 100)")
    p.add_argument("--guidance", type=float, default=e.s_text,
                   help=f"text guidance s_T: how strongly to follow the instruction (default: {e.s_text})")
    p.add_argument("--image-guidance", type=float, default=e.s_image,
                   help=f"image guidance s_I: how closely to keep the input image (default: {e.s_image}; "
                        "the paper recommends 1–1.5)")
    p.add_argument("--seed", type=int, default=e.seed, help=f"random seed of the sampler (default: {e.seed})")
    add_model_args(p, clip=False)
    p.set_defaults(func=_run_edit)

    p = sub.add_parser(
        "sdedit", help="re-generate images towards a caption (SDEdit, text-to-image model)",
        description="SDEdit (Meng et al. 2022): noise each IMAGE to t = strength·T and denoise it with the "
                    "text-to-image model guided by CAPTION, a description of the wanted result. "
                    "Writes OUTDIR/<name>.png per image and OUTDIR/grid.png.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to edit")
    p.add_argument("caption", metavar="CAPTION", help='the after-caption, e.g. "a red circle at night"')
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the edited images")
    p.add_argument("--strength", type=float, default=s.strength,
                   help=f"noise level in (0, 1]: low keeps the input, high follows the caption (default: {s.strength})")
    p.add_argument("--steps", type=int, default=s.steps,
                   help=f"DDIM steps of the full schedule; strength × steps are run (default: {s.steps})")
    p.add_argument("--guidance", type=float, default=s.guidance,
                   help=f"classifier-free guidance scale ω (default: {s.guidance})")
    p.add_argument("--seed", type=int, default=s.seed, help=f"random seed of the added noise (default: {s.seed})")
    add_model_args(p, clip=False)
    p.set_defaults(func=_run_sdedit)
