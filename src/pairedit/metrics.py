"""The one implementation of every metric pairedit reports (CLI, benchmark, tests and docs use it).

Two families:

**CLIP proxies** (no ground truth needed), as the papers report them. All take ``clip``: a
:class:`ClipFeatures`, or the ``(CLIPModel, CLIPProcessor)`` pair that ``models.load_clip`` returns.

- ``clip_image_similarity`` — cos(E(input), E(output)): how much the output still looks like the
  input (InstructPix2Pix §4.1, "CLIP image similarity").
- ``clip_directional_similarity`` — cos(E(output) − E(input), T(after caption) − T(before caption)):
  whether the image changed the way the captions changed (Gal et al., StyleGAN-NADA, as used by
  InstructPix2Pix §4.1 and by VISII §4.1 and InstructGIE §4).
- ``visual_clip_similarity`` — cos(E(example after) − E(example before), E(output) − E(input)):
  whether the test pair changed the way the example pair changed (VISII §4.1; see its docstring for
  how the paper's formula is read).
- ``frechet_clip_distance`` — the Fréchet distance between CLIP image features of two image sets,
  labelled **FD_CLIP**. It is *not* FID and is never printed as FID. ``fid`` exists, but only runs
  when Inception weights are present locally (InstructGIE §4 reports FID).

E(·) and T(·) are L2-normalised CLIP image / text embeddings (the projected features).

**Ground truth** (the paired-edit world knows the true after-image of every edit):
``psnr``, ``ssim``, ``edit_success``, ``nearest_style`` / ``style_shares``.

Images are PIL images, or tensors in the project's convention (``images.to_tensor``): float,
(3, H, W) or (1, 3, H, W), values in [-1, 1]. Ground-truth metrics work on 8-bit values (0–255).

``score_edit`` gathers every applicable metric for one edit into a dict keyed like ``METRICS``;
``METRICS[key].label`` (also ``METRIC_NAMES[key]`` and each function's ``.label``) is the name to
print, so a table never mislabels a metric.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import UserError

ImageLike = Image.Image | torch.Tensor

PSNR_CAP_DB = 100.0  # score_edit reports identical images as 100 dB instead of inf, so means stay finite
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
FRECHET_EPS = 1e-6
NO_STYLE = "none"  # nearest_style's answer when the output is nearer the unedited input than any style
# nearest_style(blur=STYLE_BLUR_SIGMA) tells the drawing styles apart by their look (paper colour, line tone, fill) rather
# than by where each line falls. Exact pixels credit a sharp style (ink: 2-px black lines) only when the lines sit
# exactly right: the true ink image of 100 held-out photos shifted by 1 px is nearest ink for 27% (5% shifted
# diagonally or by 2 px), its VAE round trip for 87%, and soft sketch lines win the rest. Blurred with σ = 2 px, every
# one of those, and of the shifted or round-tripped sketch and watercolour images, is nearest its own style (σ = 1:
# 75-87% for shifted ink). scripts/validate_style_metric.py, docs/visii/style_metric.json.
STYLE_BLUR_SIGMA = 2.0


class MetricError(UserError, ValueError):
    """Inputs a metric cannot score (mismatched sizes, too few samples, missing weights)."""


# ----------------------------------------------------------------------------------------------
# Names: every metric has a key (dict key, function .name) and a label (what tables print)


@dataclass(frozen=True)
class MetricInfo:
    key: str
    label: str
    higher_is_better: bool | None  # None: not an ordered score (e.g. the nearest style's name)
    source: str  # where the metric is defined / reported


METRICS: dict[str, MetricInfo] = {
    m.key: m
    for m in (
        MetricInfo("clip_image_similarity", "CLIP image sim.", True, "InstructPix2Pix §4.1"),
        MetricInfo("clip_directional_similarity", "CLIP directional sim.", True,
                   "Gal et al. (StyleGAN-NADA); InstructPix2Pix §4.1"),
        MetricInfo("visual_clip_similarity", "Visual CLIP sim.", True, "VISII §4.1"),
        MetricInfo("psnr", "PSNR (dB)", True, "vs. the true after-image"),
        MetricInfo("ssim", "SSIM", True, "Wang et al. 2004, vs. the true after-image"),
        MetricInfo("edit_success", "Edit success", True, "MSE(output, true) < MSE(input, true)"),
        MetricInfo("psnr_kept", "PSNR kept (dB)", True, "vs. the true after-image, on pixels the edit leaves as they were"),
        MetricInfo("psnr_changed", "PSNR changed (dB)", True, "vs. the true after-image, on pixels the edit changes"),
        MetricInfo("nearest_style", "Nearest style", None, "pixel-MSE nearest true after-image per style"),
        MetricInfo("fd_clip", "FD_CLIP", False, "Fréchet distance on CLIP image features (not FID)"),
        MetricInfo("fid", "FID", False, "Heusel et al. 2017, Inception-v3 pool features; InstructGIE §4"),
    )
}
METRIC_NAMES: dict[str, str] = {k: m.label for k, m in METRICS.items()}


def _metric(key: str) -> Callable:
    """Tag a metric function with ``.name`` (its key), ``.label`` and ``.higher_is_better``."""

    def tag(fn: Callable) -> Callable:
        info = METRICS[key]
        fn.name = info.key  # type: ignore[attr-defined]
        fn.label = info.label  # type: ignore[attr-defined]
        fn.higher_is_better = info.higher_is_better  # type: ignore[attr-defined]
        return fn

    return tag


# ----------------------------------------------------------------------------------------------
# CLIP features


def _image_key(im: Image.Image) -> str:
    h = hashlib.sha1(f"{im.mode}:{im.size}".encode())
    h.update(im.tobytes())
    return h.hexdigest()


def _as_pil(x: ImageLike) -> Image.Image:
    if isinstance(x, Image.Image):
        return x.convert("RGB") if x.mode != "RGB" else x
    if isinstance(x, torch.Tensor):
        from .images import to_pil

        t = x.unsqueeze(0) if x.dim() == 3 else x
        if t.dim() != 4 or t.shape[0] != 1 or t.shape[1] != 3:
            raise MetricError(f"expected one image tensor (3, H, W) or (1, 3, H, W), got shape {tuple(x.shape)}")
        return to_pil(t)[0]
    raise MetricError(f"expected a PIL image or an image tensor, got {type(x).__name__}")


class ClipFeatures:
    """Normalised CLIP image/text embeddings: batched, without gradients, optionally cached.

    The cache is keyed by a SHA-1 of the image's pixels (and by the text itself), so a benchmark
    that scores the same input or example image against many outputs embeds it once. Embedding a
    whole list first (``image_features(all_images)``) fills the cache in large batches; later
    single-image calls are then free. Cached features live on the CPU as float32.
    """

    def __init__(self, model, processor, batch_size: int = 32, cache: bool = True):
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.cache = cache
        self._images: dict[str, torch.Tensor] = {}
        self._texts: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def clear_cache(self) -> None:
        self._images.clear()
        self._texts.clear()

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        # transformers < 5 returns the projected tensor; 5.x a BaseModelOutputWithPooling holding it
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def _embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        px = self.processor(images=images, return_tensors="pt")["pixel_values"]
        out = self.model.get_image_features(pixel_values=px.to(self.device, self.dtype))
        return F.normalize(self._pooled(out).float(), dim=-1).cpu()

    @torch.no_grad()
    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        tok = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        out = self.model.get_text_features(**tok)
        return F.normalize(self._pooled(out).float(), dim=-1).cpu()

    def _features(self, items: list, keys: list[str], store: dict[str, torch.Tensor], embed) -> torch.Tensor:
        if not items:
            raise MetricError("no inputs to embed")
        todo: dict[str, Any] = {}
        for k, item in zip(keys, items):
            if k not in store and k not in todo:
                todo[k] = item
        fresh: dict[str, torch.Tensor] = {}
        pending = list(todo.items())
        for i in range(0, len(pending), self.batch_size):
            chunk = pending[i: i + self.batch_size]
            feats = embed([item for _, item in chunk])
            fresh.update({k: f for (k, _), f in zip(chunk, feats)})
        if self.cache:
            store.update(fresh)
        # without the cache, duplicates within one call are still embedded only once
        return torch.stack([fresh[k] if k in fresh else store[k] for k in keys])

    def image_features(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """(N, D) float32 CPU tensor of L2-normalised CLIP image embeddings."""
        pils = [_as_pil(im) for im in images]
        return self._features(pils, [_image_key(im) for im in pils], self._images, self._embed_images)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) float32 CPU tensor of L2-normalised CLIP text embeddings."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        return self._features(texts, texts, self._texts, self._embed_texts)


def as_clip_features(clip) -> ClipFeatures:
    """Accept a ClipFeatures (or anything with image_features/text_features) or a (model, processor) pair."""
    if hasattr(clip, "image_features") and hasattr(clip, "text_features"):
        return clip
    if isinstance(clip, (tuple, list)) and len(clip) == 2:
        return ClipFeatures(*clip)
    raise MetricError("clip must be a ClipFeatures or the (CLIPModel, CLIPProcessor) pair from models.load_clip")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two vectors, in float64; a zero vector has no direction and scores 0 (as F.cosine_similarity)."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 0.0
    return float((a @ b) / (na * nb))


@_metric("clip_image_similarity")
def clip_image_similarity(clip, input: ImageLike, output: ImageLike) -> float:
    """cos(E(input), E(output)) — InstructPix2Pix §4.1's "CLIP image similarity".

    How much the edited image still agrees with the input (1 = same embedding). It competes with
    the directional score: a stronger edit lowers it.
    """
    f = as_clip_features(clip).image_features([input, output])
    return _cos(f[0], f[1])


@_metric("clip_directional_similarity")
def clip_directional_similarity(clip, input: ImageLike, output: ImageLike, caption_before: str,
                                caption_after: str) -> float:
    """cos(E(output) − E(input), T(caption_after) − T(caption_before)).

    The directional CLIP similarity of Gal et al. (StyleGAN-NADA) as InstructPix2Pix §4.1 uses it:
    does the change between the images agree with the change between their captions? Swapping the
    two captions flips its sign.
    """
    cf = as_clip_features(clip)
    img = cf.image_features([input, output])
    txt = cf.text_features([caption_before, caption_after])
    return _cos(img[1] - img[0], txt[1] - txt[0])


@_metric("visual_clip_similarity")
def visual_clip_similarity(clip, example_before: ImageLike, example_after: ImageLike, input: ImageLike,
                           output: ImageLike) -> float:
    """cos(Δ_example, Δ_test), Δ_example = E(example_after) − E(example_before), Δ_test = E(output) − E(input).

    VISII §4.1's "Visual CLIP similarity": does the test pair change the way the example pair does?
    The paper writes s_visual = 1 − cosine(Δ_{x→y}, Δ_{x'→y'}) — which would be a *distance* — yet
    calls it a similarity, reports it next to two similarities and treats higher as better (its Fig. 7).
    We read the "1 −" as a typo and implement the similarity: 1 = the same change, −1 = the
    opposite change (a→b against b→a), 0 = unrelated (or no change at all).
    """
    f = as_clip_features(clip).image_features([example_before, example_after, input, output])
    return _cos(f[1] - f[0], f[3] - f[2])


# ----------------------------------------------------------------------------------------------
# Ground-truth metrics (pixels)


def _pixels(x: ImageLike, what: str = "image") -> torch.Tensor:
    """(3, H, W) float64 in 0..255 from a PIL image or a [-1, 1] tensor."""
    if isinstance(x, Image.Image):
        arr = np.asarray(x.convert("RGB"), dtype=np.float64)
        return torch.from_numpy(arr).permute(2, 0, 1)
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().double()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] != 3:
            raise MetricError(f"{what}: expected an image tensor (3, H, W) or (1, 3, H, W), got {tuple(x.shape)}")
        return (t.clamp(-1, 1) + 1) * 127.5
    raise MetricError(f"{what}: expected a PIL image or an image tensor, got {type(x).__name__}")


def _pair(a: ImageLike, b: ImageLike, names: tuple[str, str] = ("a", "b")) -> tuple[torch.Tensor, torch.Tensor]:
    pa, pb = _pixels(a, names[0]), _pixels(b, names[1])
    if pa.shape != pb.shape:
        raise MetricError(f"{names[0]} is {pa.shape[2]}×{pa.shape[1]} but {names[1]} is {pb.shape[2]}×{pb.shape[1]}; "
                          "ground-truth metrics compare images of the same size")
    return pa, pb


def mse(a: ImageLike, b: ImageLike) -> float:
    """Mean squared error over all pixels and RGB channels, on the 0–255 scale."""
    pa, pb = _pair(a, b)
    return float(((pa - pb) ** 2).mean())


@_metric("psnr")
def psnr(a: ImageLike, b: ImageLike, cap: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB for 8-bit images: 10·log10(255² / MSE), MSE over RGB.

    Identical images give ``inf``; pass ``cap`` (``score_edit`` uses ``PSNR_CAP_DB`` = 100 dB) to
    get a finite number that can be averaged.
    """
    return _psnr_from_mse(mse(a, b), cap)


def _psnr_from_mse(m: float, cap: float | None) -> float:
    value = math.inf if m == 0 else 10.0 * math.log10(255.0**2 / m)
    return min(value, cap) if cap is not None else value


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size), sums to 1


def _luminance(p: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B, shape (1, 1, H, W)."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    return (p * w[:, None, None]).sum(0)[None, None]


@_metric("ssim")
def ssim(a: ImageLike, b: ImageLike) -> float:
    """Mean SSIM (Wang, Bovik, Sheikh & Simoncelli 2004) on the luminance channel.

    As in the paper's reference implementation: an 11×11 Gaussian window with σ = 1.5, constants
    C1 = (0.01·255)², C2 = (0.03·255)², local statistics only where the window fits entirely
    inside the image ("valid" convolution), the SSIM map averaged. Colour images are reduced to
    BT.601 luma Y first (not averaged over R, G, B), so it matches the usual greyscale SSIM. The
    reference code's optional down-sampling of large images is not applied. Identical images give 1.
    """
    pa, pb = _pair(a, b)
    if min(pa.shape[1:]) < SSIM_WINDOW:
        raise MetricError(f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, got "
                          f"{pa.shape[2]}×{pa.shape[1]}")
    x, y = _luminance(pa), _luminance(pb)
    w = _gaussian_window()
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x**2
    syy = F.conv2d(y * y, w) - mu_y**2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return float((num / den).mean())


@_metric("edit_success")
def edit_success(input: ImageLike, output: ImageLike, true_after: ImageLike) -> bool:
    """True when the output is nearer the true after-image than the unedited input is (pixel MSE).

    The least an edit must do: move the image towards the right answer. A no-op output fails, and
    so does any output when the input already equals the true after-image (nothing to improve).
    """
    pi, pt = _pair(input, true_after, ("input", "true_after"))
    po, _ = _pair(output, true_after, ("output", "true_after"))
    return bool(((po - pt) ** 2).mean() < ((pi - pt) ** 2).mean())


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """(a-only successes, b-only successes, exact two-sided McNemar p) of paired outcomes.

    For comparing two methods or models on the same inputs: only the discordant pairs count.
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    only_a = sum(bool(x) and not y for x, y in zip(a, b))
    only_b = sum(bool(y) and not x for x, y in zip(a, b))
    n = only_a + only_b
    if n == 0:
        return 0, 0, 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return only_a, only_b, min(1.0, 2 * tail)


def paired_difference(diffs: Sequence[float]) -> tuple[float, float, int]:
    """(mean, standard error, sign) of paired differences; sign is +1 or −1 only beyond two standard errors.

    For continuous scores of two methods on the same inputs (McNemar's counterpart for pass/fail): a mean
    within two standard errors of zero, or fewer than two pairs, supports neither side (sign 0).
    """
    n = len(diffs)
    mean = float(np.mean(diffs)) if n else float("nan")
    se = float(np.std(diffs, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    sign = int(np.sign(mean)) if n > 1 and abs(mean) > 2 * se else 0
    return mean, se, sign


def _region_psnr(input: ImageLike, output: ImageLike, true_after: ImageLike, changed: bool,
                 cap: float | None) -> float:
    pi, pt = _pair(input, true_after, ("input", "true_after"))
    po, _ = _pair(output, true_after, ("output", "true_after"))
    mask = ((pi - pt).abs().sum(dim=0) > 0) == changed
    if not mask.any():
        return math.nan
    return _psnr_from_mse(float(((po - pt) ** 2)[:, mask].mean()), cap)


@_metric("psnr_kept")
def psnr_kept(input: ImageLike, output: ImageLike, true_after: ImageLike, cap: float | None = None) -> float:
    """PSNR to the true after-image on the pixels the edit keeps (input == true after there).

    Separates "did the model leave the rest of the image alone" from "did it make the edit";
    ``nan`` when the edit changes every pixel; ``cap`` as in ``psnr``.
    """
    return _region_psnr(input, output, true_after, changed=False, cap=cap)


@_metric("psnr_changed")
def psnr_changed(input: ImageLike, output: ImageLike, true_after: ImageLike, cap: float | None = None) -> float:
    """PSNR to the true after-image on the pixels the edit changes; ``nan`` when it changes none."""
    return _region_psnr(input, output, true_after, changed=True, cap=cap)


@_metric("nearest_style")
def nearest_style(output: ImageLike, candidates: Mapping[str, ImageLike], input: ImageLike | None = None,
                  blur: float = 0.0) -> str:
    """The style whose true after-image is nearest the output in pixel MSE.

    For ambiguous instructions (VISII Fig. 6: "turn it into a drawing" has several right answers)
    ``candidates`` maps each style to the true after-image of the same input in that style; the
    answer says which one the method produced. Ties go to the first style in ``candidates`` order.
    If ``input`` is given and the output is at least as near the unedited input as to every style,
    the answer is ``NO_STYLE`` ("none") — otherwise an unedited output would be credited to some style.
    ``blur`` > 0 compares all images after a Gaussian blur of that σ in pixels (``STYLE_BLUR_SIGMA``):
    the look of a style, not the placement of its lines.
    """
    if not candidates:
        raise MetricError("nearest_style needs at least one candidate style")
    po = gaussian_blur(_pixels(output, "output"), blur)
    dists = {}
    for style, im in candidates.items():
        _, pc = _pair(output, im, ("output", f"candidate {style!r}"))
        dists[style] = float(((po - gaussian_blur(pc, blur)) ** 2).mean())
    best = min(dists, key=dists.__getitem__)
    if input is not None:
        _, pi = _pair(output, input, ("output", "input"))
        if float(((po - gaussian_blur(pi, blur)) ** 2).mean()) <= dists[best]:
            return NO_STYLE
    return best


def gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    """(3, H, W) pixels blurred by a Gaussian of std ``sigma`` px (window ±3σ, edges replicated); σ = 0: unchanged."""
    if sigma <= 0:
        return pixels
    r = max(1, math.ceil(3 * sigma))
    padded = F.pad(pixels[:, None], (r, r, r, r), mode="replicate")  # (3, 1, H + 2r, W + 2r)
    return F.conv2d(padded, _gaussian_window(2 * r + 1, sigma).to(pixels.dtype))[:, 0]


def style_shares(outputs: Sequence[ImageLike], candidates: Mapping[str, ImageLike] | Sequence[Mapping[str, ImageLike]],
                 inputs: Sequence[ImageLike] | None = None, blur: float = 0.0) -> dict[str, float]:
    """Share of outputs (0–1) whose nearest style is each style; the shares sum to 1.

    ``candidates`` is one style→true-after dict per output (each input has its own true results),
    or a single dict shared by all outputs. Every candidate style is listed, with 0 when no output
    landed on it; ``NO_STYLE`` appears only when ``inputs`` are given; ``blur`` as in ``nearest_style``.
    """
    outputs = list(outputs)
    if not outputs:
        raise MetricError("style_shares needs at least one output")
    per = [candidates] * len(outputs) if isinstance(candidates, Mapping) else list(candidates)
    if len(per) != len(outputs):
        raise MetricError(f"{len(outputs)} outputs but {len(per)} candidate sets")
    if inputs is not None and len(inputs) != len(outputs):
        raise MetricError(f"{len(outputs)} outputs but {len(inputs)} inputs")
    counts: dict[str, int] = {}
    for c in per:
        for style in c:
            counts.setdefault(style, 0)
    if inputs is not None:
        counts.setdefault(NO_STYLE, 0)
    for i, (out, c) in enumerate(zip(outputs, per)):
        counts[nearest_style(out, c, inputs[i] if inputs is not None else None, blur=blur)] += 1
    return {s: n / len(outputs) for s, n in counts.items()}


# ----------------------------------------------------------------------------------------------
# Fréchet distances


def _psd_sqrt_trace(a: np.ndarray, b: np.ndarray) -> float:
    """tr((A·B)^½) for symmetric PSD A, B, via eigendecompositions only.

    A·B is similar to A^½·B·A^½ (symmetric PSD), so both have the same eigenvalues and
    tr((A·B)^½) = Σ √λ_i(A^½·B·A^½). Tiny negative eigenvalues from rounding are clipped to 0,
    which avoids the complex results scipy.linalg.sqrtm gives on ill-conditioned products.
    """
    wa, va = np.linalg.eigh(a)
    sqrt_a = (va * np.sqrt(np.clip(wa, 0, None))) @ va.T
    m = sqrt_a @ b @ sqrt_a
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor,
                     eps: float = FRECHET_EPS) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples).

    d² = |μ_a − μ_b|² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½), computed in float64 with unbiased
    covariances (the FID formula of Heusel et al. 2017, for any features). With fewer samples than
    feature dimensions the covariances are singular; ``eps`` is added to both diagonals (default
    1e-6, negligible against CLIP/Inception feature variances) and the matrix square root is taken
    through symmetric eigendecompositions (see ``_psd_sqrt_trace``), so the result is always a real
    number ≥ 0 (clipped at 0 against rounding). Identical sets give ≈ 0, and two sets that differ
    by a constant shift give ≈ |shift|². Small sets give biased (too large) distances: compare only
    distances computed from the same number of samples.
    """
    a = np.asarray(features_a.detach().cpu() if isinstance(features_a, torch.Tensor) else features_a, dtype=np.float64)
    b = np.asarray(features_b.detach().cpu() if isinstance(features_b, torch.Tensor) else features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise MetricError(f"feature sets must be (N, D) with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise MetricError(f"a Fréchet distance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1]) + eps * np.eye(a.shape[1])
    cov_b = np.cov(b, rowvar=False).reshape(b.shape[1], b.shape[1]) + eps * np.eye(b.shape[1])
    d2 = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * _psd_sqrt_trace(cov_a, cov_b))
    return max(d2, 0.0)


@_metric("fd_clip")
def frechet_clip_distance(clip, images_a: Sequence[ImageLike], images_b: Sequence[ImageLike],
                          eps: float = FRECHET_EPS) -> float:
    """FD_CLIP: the Fréchet distance between the L2-normalised CLIP image embeddings of two image sets.

    A distribution-level image-quality proxy in the spirit of FID (InstructGIE §4 reports FID), but
    on CLIP features instead of Inception-v3 ones: its values are *not* comparable with published
    FIDs and it must be labelled FD_CLIP, never FID. Lower is better.
    """
    cf = as_clip_features(clip)
    return frechet_distance(cf.image_features(list(images_a)).numpy(), cf.image_features(list(images_b)).numpy(), eps)


INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's port of the TF FID Inception


def inception_weights_path() -> Path | None:
    """Where pytorch-fid's FID Inception weights are cached locally, or None (nothing is downloaded)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    return path if path.exists() else None


@_metric("fid")
def fid(images_a: Sequence[ImageLike], images_b: Sequence[ImageLike], batch_size: int = 32,
        device: str = "cpu") -> float:
    """FID (Heusel et al. 2017): Fréchet distance of Inception-v3 pool3 (2048-d) features.

    Runs only when the ``pytorch-fid`` package is installed *and* its FID Inception weights are
    already in the torch hub cache; it never downloads. Otherwise it raises a MetricError saying
    what to install — use ``frechet_clip_distance`` (FD_CLIP) instead, labelled as such.
    """
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError:
        InceptionV3 = None
    weights = inception_weights_path()
    if InceptionV3 is None or weights is None:
        missing = "the pytorch-fid package is not installed" if InceptionV3 is None else \
            f"{INCEPTION_WEIGHTS_FILE} is not in {Path(torch.hub.get_dir()) / 'checkpoints'}"
        raise MetricError(f"FID needs Inception weights; {missing}. Install pytorch-fid and put "
                          f"{INCEPTION_WEIGHTS_FILE} in the torch hub checkpoints folder (it is fetched on first "
                          "use on a machine with network), or report frechet_clip_distance (FD_CLIP) instead — "
                          "never under the name FID.")
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()

    @torch.no_grad()
    def feats(images: Sequence[ImageLike]) -> np.ndarray:
        out = []
        images = list(images)
        for i in range(0, len(images), batch_size):
            x = torch.stack([_pixels(_as_pil(im)) for im in images[i: i + batch_size]]).float() / 255.0
            out.append(model(x.to(device))[0].squeeze(-1).squeeze(-1).cpu().numpy())
        return np.concatenate(out)

    return frechet_distance(feats(images_a), feats(images_b))


# ----------------------------------------------------------------------------------------------
# Everything for one edit


def score_edit(input: ImageLike, output: ImageLike, *, true_after: ImageLike | None = None, clip=None,
               caption_before: str | None = None, caption_after: str | None = None,
               example: tuple[ImageLike, ImageLike] | None = None,
               style_candidates: Mapping[str, ImageLike] | None = None,
               psnr_cap: float | None = PSNR_CAP_DB) -> dict[str, float | bool | str]:
    """Every metric that applies to one edit, keyed like ``METRICS`` (print ``METRIC_NAMES[key]``).

    - ``clip`` given: ``clip_image_similarity``; with both captions also
      ``clip_directional_similarity``; with ``example=(before, after)`` also ``visual_clip_similarity``.
    - ``true_after`` given: ``psnr`` (capped at ``psnr_cap`` dB so means stay finite), ``ssim``,
      ``edit_success``.
    - ``style_candidates`` given (style → true after-image): ``nearest_style`` (may be ``NO_STYLE``).
    Pass one ClipFeatures across calls so repeated images (inputs, examples) are embedded once.
    """
    scores: dict[str, float | bool | str] = {}
    if clip is not None:
        cf = as_clip_features(clip)
        scores["clip_image_similarity"] = clip_image_similarity(cf, input, output)
        if caption_before is not None and caption_after is not None:
            scores["clip_directional_similarity"] = clip_directional_similarity(cf, input, output, caption_before,
                                                                                caption_after)
        if example is not None:
            scores["visual_clip_similarity"] = visual_clip_similarity(cf, example[0], example[1], input, output)
    if true_after is not None:
        scores["psnr"] = psnr(output, true_after, cap=psnr_cap)
        scores["ssim"] = ssim(output, true_after)
        scores["edit_success"] = edit_success(input, output, true_after)
    if style_candidates:
        scores["nearest_style"] = nearest_style(output, style_candidates, input)
    return scores
