"""The one image loader and writer: every CLI command, the web app, benchmarks and tests use it.

Rules (documented once, here and in the README):
- any readable image becomes 8-bit RGB: RGBA/LA/P-with-transparency are composited on white,
  greyscale and palette images are expanded, 16-bit images are scaled to 8 bits;
- images above ``MAX_PIXELS`` are refused (decompression-bomb guard);
- a model works at one resolution: images are resized so the shorter side is the model's
  resolution and centre-cropped to a multiple of 8 (square world images simply resize);
- a before/after pair must have the same aspect ratio; the after-image is resized to the
  before-image's size when their sizes differ.
Writers are atomic (temporary file + rename) and refuse to overwrite an input.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from .errors import UserError

MAX_PIXELS = 64_000_000  # ~8000×8000; anything larger is refused before decoding


class ImageError(UserError, ValueError):
    """A user-supplied image file that cannot be used; the message names the file."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as 8-bit RGB, with a one-line error naming the file on any problem."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{path}: image is {w}×{h} pixels, above the {MAX_PIXELS:,}-pixel limit")
            im.load()
            return to_rgb(im)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: not a readable image ({err.__class__.__name__})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: cannot decode image ({err})") from err


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB: transparency over white, 16-bit and float scaled, greyscale/palette expanded."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray((arr / scale * 255).clip(0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray((arr.clip(0, 1) * 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def fit(im: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is ``resolution``, then centre-crop each side to a multiple of 8."""
    w, h = im.size
    s = resolution / min(w, h)
    nw, nh = max(8, round(w * s)), max(8, round(h * s))
    im = im.resize((nw, nh), Image.BICUBIC) if (nw, nh) != (w, h) else im
    cw, ch = nw - nw % 8, nh - nh % 8
    left, top = (nw - cw) // 2, (nh - ch) // 2
    return im.crop((left, top, left + cw, top + ch)) if (cw, ch) != (nw, nh) else im


def match_pair(before: Image.Image, after: Image.Image, names: tuple[str, str] = ("before", "after")) -> Image.Image:
    """The after-image at the before-image's size (same aspect ratio required, 2% tolerance)."""
    if before.size == after.size:
        return after
    rb, ra = before.width / before.height, after.width / after.height
    if abs(rb - ra) / rb > 0.02:
        raise ImageError(f"{names[1]}: size {after.width}×{after.height} has a different aspect ratio from "
                         f"{names[0]} ({before.width}×{before.height}); crop them alike first")
    return after.resize(before.size, Image.BICUBIC)


def to_tensor(images: list[Image.Image] | Image.Image) -> torch.Tensor:
    """PIL images (same size) → float tensor (B, 3, H, W) in [-1, 1], the VAE's input range."""
    if isinstance(images, Image.Image):
        images = [images]
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """Tensor (B, 3, H, W) in [-1, 1] → PIL images."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def check_output(path: str | os.PathLike, inputs: list[str | os.PathLike] = ()) -> Path:
    """Refuse an output path that is one of the inputs; create its folder."""
    out = Path(path)
    for p in inputs:
        if Path(p).exists() and out.exists() and out.resolve() == Path(p).resolve():
            raise ImageError(f"{out}: refusing to overwrite an input file")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename into place, so a crash never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_image(im: Image.Image, path: str | os.PathLike, inputs: list[str | os.PathLike] = ()) -> Path:
    """Write a PNG (or any PIL format by suffix) atomically, never over an input."""
    path = check_output(path, inputs)
    return atomic_write(path, lambda tmp: im.save(tmp, format=_format(path)))


def _format(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")


def grid(rows: list[list[Image.Image]], labels: list[str] | None = None, row_labels: list[str] | None = None,
         cell: int = 128, pad: int = 4) -> Image.Image:
    """A labelled grid of images (cells upscaled with nearest-neighbour so small images stay crisp)."""
    ncol = max(len(r) for r in rows)
    top = 14 if labels else 0
    left = 110 if row_labels else 0
    out = Image.new("RGB", (left + ncol * (cell + pad) + pad, top + len(rows) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(out)
    for j, text in enumerate(labels or []):
        draw.text((left + pad + j * (cell + pad), 1), text[:22], fill="black")
    for i, row in enumerate(rows):
        y = top + pad + i * (cell + pad)
        if row_labels:  # wrapped to the label column (~18 characters a line), as many lines as fit the cell
            lines = textwrap.wrap(row_labels[i], 18)[: max(1, cell // 12)]
            y0 = y + cell // 2 - 6 * len(lines)
            for k, line in enumerate(lines):
                draw.text((2, y0 + 12 * k), line, fill="black")
        for j, im in enumerate(row):
            resample = Image.NEAREST if im.width < cell else Image.BICUBIC
            out.paste(im.resize((cell, cell * im.height // im.width), resample), (left + pad + j * (cell + pad), y))
    return out
