"""The benchmark's methods, each a small declarative spec: name → function + params.

Rows of VISII Table 1 plus the baselines of its §4.3:

- ``ip2p``          InstructPix2Pix with the true instruction (Table 1 "GT, no training").
- ``ip2p-caption``  InstructPix2Pix with the PEZ caption of the example's after-image as instruction
                    (Table 1 "Cap., no training").
- ``sdedit``        SDEdit on the text-to-image model with the test image's true after-caption.
- ``pti``           Prompt Tuning Inversion of the test image (source: its before-caption), edited
                    with its after-caption.
- ``visii-{mse|mseclip}-{gt|cap}-{n}p-{random|fixed}``  VISII learned from the first n example
  pairs with the MSE loss only (λ_clip = 0) or MSE + CLIP, initialised from the true instruction
  (gt) or the PEZ caption of the after-images (cap), applied with random or with the recorded
  (fixed) noises. The random and fixed rows share one learning (cached as .safetensors).

A runner takes the run ``Context``, the direction, the test index and the spec's params, and
returns the edited PIL image. Scoring is the same for every method (``Context.score``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from PIL import Image

from .. import world
from ..images import fit
from ..inversion import PTIConfig
from ..visii import VisiiConfig


@dataclass(frozen=True)
class Method:
    """One row of the benchmark: ``fn(ctx, direction, test, **params)`` → edited image."""

    name: str
    fn: Callable
    params: dict = field(default_factory=dict)
    model: str = "ip2p"  # the pipeline it needs: "ip2p" or "sd" (text-to-image)
    settings: tuple[str, ...] = ("sample_steps",)  # Suite fields its result depends on (part of the cache key)
    label: str = ""
    config: type | None = None  # the config class whose defaults the result depends on (part of the cache key)

    def defaults(self) -> dict:
        """The current defaults of ``config``: changing one (e.g. VISII's ``loss_on``) invalidates cached results."""
        return asdict(self.config()) if self.config else {}

    @property
    def row(self) -> str:
        """The Table 1 row: the name without its noise suffix (random and fixed are columns)."""
        return self.name.rsplit("-", 1)[0] if "noise" in self.params else self.name

    @property
    def noise(self) -> str:
        """'random' or 'fixed': the Table 1 column group (baselines sample with random noise)."""
        return self.params.get("noise", "random")


# ----------------------------------------------------------------------------------------------
# Runners


def run_ip2p(ctx, d, t: int, instruction: str = "true") -> Image.Image:
    """InstructPix2Pix with the true instruction, or with the PEZ caption of the example after-image."""
    from ..editing import ip2p_edit

    text = d.instruction if instruction == "true" else ctx.caption(d, 1)
    return ip2p_edit(ctx.ip2p, [d.tests[t].images()[0]], text, steps=ctx.suite.sample_steps,
                     seed=ctx.unit_seed(d, t))[0]


def run_sdedit(ctx, d, t: int) -> Image.Image:
    """SDEdit towards the test pair's true after-caption (the paper gives SDEdit the after description)."""
    from ..editing import sdedit

    pair = d.tests[t]
    return sdedit(ctx.sd, [pair.images()[0]], pair.after.caption, steps=ctx.suite.sdedit_steps,
                  seed=ctx.unit_seed(d, t))[0]


def run_pti(ctx, d, t: int) -> Image.Image:
    """Prompt Tuning Inversion (condition interpolation, paper defaults) from the before- to the after-caption."""
    from ..inversion import PTIConfig, edit, invert

    pair = d.tests[t]
    inv = invert(ctx.sd, pair.images()[0], "pti", prompt=pair.before.caption, config=PTIConfig(steps=ctx.suite.pti_steps))
    return edit(ctx.sd, inv, pair.after.caption)


def run_visii(ctx, d, t: int, loss: str, init: str, pairs: int, noise: str) -> Image.Image:
    """VISII: the (cached) instruction learned from the first ``pairs`` examples, applied to the test image."""
    from ..visii import apply

    inst = ctx.instruction(d, loss=loss, init=init, pairs=pairs)
    return apply(ctx.ip2p, inst, [d.tests[t].images()[0]], noise=noise, seed=ctx.unit_seed(d, t),
                 steps=ctx.suite.sample_steps, check=False)[0]


# ----------------------------------------------------------------------------------------------
# The registry


def _visii_methods() -> list[Method]:
    # Table 1: one pair with each loss and each initialisation; 2–4 pairs with MSE + CLIP from a caption.
    variants = [("mse", "gt", 1), ("mse", "cap", 1), ("mseclip", "gt", 1), ("mseclip", "cap", 1),
                ("mseclip", "cap", 2), ("mseclip", "cap", 3), ("mseclip", "cap", 4)]
    out = []
    for loss, init, n in variants:
        for noise in ("random", "fixed"):
            out.append(Method(
                f"visii-{loss}-{init}-{n}p-{noise}", run_visii, dict(loss=loss, init=init, pairs=n, noise=noise),
                settings=("sample_steps", "visii_steps", "caption_steps"), config=VisiiConfig,
                label=f"VISII, {n} pair(s), {'MSE' if loss == 'mse' else 'MSE + CLIP'} loss, init from "
                      f"{'the true instruction' if init == 'gt' else 'a PEZ caption'}, {noise} noise"))
    return out


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("ip2p", run_ip2p, dict(instruction="true"), label="InstructPix2Pix with the true instruction"),
    Method("ip2p-caption", run_ip2p, dict(instruction="caption"), settings=("sample_steps", "caption_steps"),
           label="InstructPix2Pix with the PEZ caption of the example after-image as instruction"),
    Method("sdedit", run_sdedit, model="sd", settings=("sdedit_steps",),
           label="SDEdit (text-to-image model) with the true after-caption"),
    Method("pti", run_pti, model="sd", settings=("pti_steps",), config=PTIConfig,
           label="Prompt Tuning Inversion (text-to-image model), before- → after-caption"),
    *_visii_methods(),
)}


# ----------------------------------------------------------------------------------------------
# Scoring (pairedit.metrics, the one implementation)


def style_candidates(pair: world.Pair, size: int) -> dict[str, Image.Image]:
    """The true after-image of the test scene in each drawing style (for the vague "drawing" kind)."""
    return {s: fit(world.render(world.apply_edit(pair.before, world.Edit(f"style_{s}"))), size)
            for s in world.DRAWING_STYLES}


def score(clip_features, d, t: int, output: Image.Image) -> dict:
    """Every metric of ``metrics.score_edit`` for one output, at the output's resolution.

    The input, the true after-image and the example pair are fitted to the output's size (the bundled
    models work at the world's 64×64, so nothing changes there). Visual CLIP similarity is measured
    against example pair 1, which every method's row can see; directional similarity uses the test
    pair's true captions. Drawing-style directions also get the nearest drawing style.
    """
    from ..metrics import score_edit

    size = output.width
    pair, example = d.tests[t], d.examples[0]
    before, after = (fit(im, size) for im in pair.images())
    ex_before, ex_after = (fit(im, size) for im in example.images())
    cands = style_candidates(pair, size) if d.target_style else None
    return score_edit(before, output, true_after=after, clip=clip_features, caption_before=pair.before.caption,
                      caption_after=pair.after.caption, example=(ex_before, ex_after), style_candidates=cands)


def timed(fn: Callable, *args, **kwargs):
    """(result, seconds)."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0
