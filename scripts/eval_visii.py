#!/usr/bin/env python
"""Measure Visual Instruction Inversion (VISII) on the world's held-out edits and write docs/visii.md.

    OMP_NUM_THREADS=2 python scripts/eval_visii.py                   # the reported run: bundled models, -> docs/
    python scripts/eval_visii.py --quick                             # smaller sizes (minutes, not an hour)
    python scripts/eval_visii.py --model RUN/bundle --steps 500      # a bundle folder (ip2p/ clip/), fewer steps

Every edit is learned from ONE example pair (caption-initialised, VisiiConfig defaults) and applied to
``--tests`` new held-out images; InstructPix2Pix (IP2P) edits the same images with the same seeds.

1. Edit success per category: held-out directions (``bench.suite.make_directions``, round-robin over the
   categories: ``--directions-per-category`` each); VISII (library defaults: init, ``loss_on``, noise) vs IP2P
   with the true instruction. Edit success = output nearer the true after-image than the input is (pixel
   MSE, ``metrics.edit_success``); PSNR to the true after-image.
2. Ambiguous drawing styles (VISII Fig. 6): one example pair per drawing style; share of outputs whose
   nearest true after-image among the three styles is the example's (``metrics.style_shares``), next to
   IP2P told the vague "turn it into a drawing".
3. Hybrid instruction (Fig. 4b): a watercolour edit learned from one pair, applied with the user's words
   "turn the circle into a star" (the world's replace wording). Counted as doing both edits when the output
   is nearer (pixel MSE) the true after-image of watercolour ∘ replace than that of either edit alone and
   than the input (``metrics.style_shares`` over those three candidates with ``inputs=``).
4. ``loss_on`` "conditional" (paper Eq. 2) vs "guided" (reference code): same directions, seeds and caption;
   edit success and PSNR, a paired McNemar test, and a recommendation line.
5. Fixed vs random noise (§5 Noises): edit success, PSNR, CLIP image similarity for both.

Outputs: OUT/visii.md, OUT/visii/results.json (one row per output image), OUT/visii/grid.png (example
before/after | test before | VISII | IP2P | true after). A unit (one learning with its applications, or one
baseline over one direction's test images) is cached as soon as it finishes, one sealed record per unit
(``pairedit.bench.cache``: CACHE/units/KEY.json and its output PNGs); rerunning the same command resumes. Units
are keyed by their settings and the models' weights. ``--shard I/N`` computes every N-th unit only, so N
processes can share the cores; the same command without it then reads them all and writes the report.

Cost, from the per-step costs measured for the benchmark (bundled-size models, 1 thread, loaded machine:
a learning step ≈ 0.1 s, 100 PEZ steps ≈ 1.6 s, a 20-step edit ≈ 2 s): the defaults (7 categories × 2
directions × 3 tests, 2 learnings of 1000 steps each, + 4 learnings for §2–3) ≈ 65 min; --quick ≈ 5 min.
Measured on the 2-core CPU (session 6): 2,227 s of unit compute at 1 thread, ≈ 21 min of wall time as two shards.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pairedit import __version__, metrics, models, world
from pairedit.bench.cache import Cache, CorruptEntry, key_of
from pairedit.bench.methods import score, style_candidates
from pairedit.bench.run import resolve_models
from pairedit.bench.suite import Direction, Suite, make_directions, select_edits, shard_of, stable_int
from pairedit.errors import UserError
from pairedit.images import atomic_write, fit, grid, save_image
from pairedit.visii import BANK_STEPS, DEFAULT_NOISE, PAPER_STEPS, VisiiConfig, default_steps

LOSSES = ("conditional", "guided")
NOISES = ("fixed", "random")
DEFAULT_LOSS = VisiiConfig().loss_on  # what every VISII unit uses: the library default
# What §1–3 report first: the library default, init="auto", as it resolves on the bundled model, which ships its
# instruction bank (instructions.txt). The bank units need one: a --model folder without it fails with that message.
DEFAULT_INIT = "bank"
# The one-pair VISII unit (section, method) of each init. "caption": the paper's PEZ caption, the units §4/§5
# study the loss and the noise on; "words": the user's own text, here the true instruction, as the paper's "GT"
# rows (Table 1); "search" and "bank": init="search" / "bank". §1 reads the default init's units, §6 compares them.
EDIT_UNITS = {"caption": ("edit", f"visii-{DEFAULT_LOSS}"), "words": ("init", "visii-words"),
              "search": ("init", "visii-search"), "bank": ("init", "visii-bank")}
DRAWING_UNITS = {"caption": "visii", "search": "visii-search", "bank": "visii-bank"}
HYBRID_UNITS = {"caption": "visii-hybrid", "search": "visii-hybrid-search", "bank": "visii-hybrid-bank"}


def unit_noise(init: str) -> str:
    """The noise a one-pair VISII unit of §1-3 and §6 applies with: the library's (``visii.DEFAULT_NOISE``) for the
    default init; the other inits keep the fixed noise they were measured with before session 37 (cached records)."""
    return DEFAULT_NOISE if init == DEFAULT_INIT else "fixed"


HYBRID_STYLE = world.Edit("style_watercolor")
HYBRID_REPLACE = world.Edit("replace_star", target="circle")
HYBRID_CANDIDATES = ("both", "style only", "replace only")
SHARE_ORDER = (*world.DRAWING_STYLES, *HYBRID_CANDIDATES, metrics.NO_STYLE)  # order of the share tables
DEFAULTS = dict(directions_per_category=2, tests=3, style_tests=24, steps=VisiiConfig().steps,
                caption_steps=VisiiConfig().caption_steps, search_steps=VisiiConfig().search_steps, sample_steps=20)
QUICK = dict(directions_per_category=1, tests=2, style_tests=2, steps=100, caption_steps=100, search_steps=100,
             sample_steps=10)
ASSETS = "visii"  # folder next to visii.md
SECTIONS = ("edit", "drawing", "hybrid")  # --sections: §1 and §4-6, §2, §3


# ----------------------------------------------------------------------------------------------
# What is measured


@dataclass(frozen=True)
class Sizes:
    categories: tuple[str, ...]
    directions_per_category: int
    tests: int
    style_tests: int  # test images of §2's drawing-style directions and §3's hybrid: one learning run each, so cheap
    steps: int | None  # VISII learning steps N; None: the library's (visii.default_steps of the init)
    caption_steps: int  # PEZ steps of the caption initialisation
    search_steps: int  # PEZ steps of the search initialisation
    sample_steps: int  # sampling steps of VISII and IP2P
    seed: int
    sections: tuple[str, ...] = SECTIONS  # which parts to measure (--sections)

    def suite(self) -> Suite:
        return Suite("eval-visii", directions=self.directions_per_category * len(self.categories), tests=self.tests,
                     pairs=1, visii_steps=PAPER_STEPS if self.steps is None else self.steps,
                     caption_steps=self.caption_steps, sample_steps=self.sample_steps)


@dataclass(frozen=True)
class Unit:
    """One cached piece of work: a method over all test images of one direction."""

    section: str  # "edit" | "drawing" | "hybrid"
    method: str  # "ip2p", "ip2p-vague", or a VISII unit of EDIT_UNITS / DRAWING_UNITS / HYBRID_UNITS
    direction: Direction
    loss_on: str | None = None  # VISII units only

    @property
    def label(self) -> str:
        return f"{self.section} {self.direction.edit.name} {self.method}"


def edit_directions(sizes: Sizes) -> list[Direction]:
    """§1/4/5: held-out directions, the benchmark's sampler, round-robin over the categories."""
    return make_directions(sizes.suite(), sizes.seed, select_edits(list(sizes.categories)))


def drawing_directions(sizes: Sizes) -> list[Direction]:
    """§2: one direction per drawing style; its example's after-image is that style."""
    out = []
    for j, style in enumerate(world.DRAWING_STYLES):
        edit = world.Edit("drawing", value=style)
        pairs = world.direction_pairs(edit, 1 + sizes.style_tests, seed=stable_int(f"{sizes.seed}:drawing:{style}"))
        out.append(Direction(1000 + j, edit, (pairs[0],), tuple(pairs[1:])))
    return out


def hybrid_direction(sizes: Sizes) -> Direction:
    """§3: a watercolour example pair; test pairs of the replace edit on photo scenes (watercolour applies too)."""
    example = world.direction_pairs(HYBRID_STYLE, 1, seed=stable_int(f"{sizes.seed}:hybrid:example"))[0]
    candidates = world.direction_pairs(HYBRID_REPLACE, 6 * sizes.style_tests + 6,
                                       seed=stable_int(f"{sizes.seed}:hybrid:tests"))
    tests = [p for p in candidates if world.is_applicable(p.before, HYBRID_STYLE)][:sizes.style_tests]
    if len(tests) < sizes.style_tests:
        raise UserError(f"found only {len(tests)} photo scenes for the hybrid test; lower --style-tests")
    return Direction(2000, HYBRID_STYLE, (example,), tuple(tests))


def make_units(sizes: Sizes) -> list[Unit]:
    units = []
    for d in edit_directions(sizes) if "edit" in sizes.sections else []:
        units.append(Unit("edit", "ip2p", d))
        units += [Unit("edit", f"visii-{loss}", d, loss) for loss in LOSSES]
        units += [Unit(section, method, d, DEFAULT_LOSS) for section, method in EDIT_UNITS.values()
                  if section == "init"]
    for d in drawing_directions(sizes) if "drawing" in sizes.sections else []:
        units += [Unit("drawing", "ip2p-vague", d), *(Unit("drawing", m, d, DEFAULT_LOSS) for m in DRAWING_UNITS.values())]
    if "hybrid" in sizes.sections:
        d = hybrid_direction(sizes)
        units += [Unit("hybrid", "ip2p", d), *(Unit("hybrid", m, d, DEFAULT_LOSS) for m in HYBRID_UNITS.values())]
    return units


def hybrid_words() -> tuple[str, str]:
    """(the user's words appended to the learned instruction, IP2P's one-sentence instruction for both edits)."""
    replace = HYBRID_REPLACE.instruction(wording=0)
    return replace, f"{HYBRID_STYLE.instruction(wording=0)} and {replace}"


# ----------------------------------------------------------------------------------------------
# Computing units


class Context:
    """Models, sizes, the cache file; computes units."""

    def __init__(self, args, sizes: Sizes):
        from pairedit.metrics import ClipFeatures
        from pairedit.models import fingerprint, load_clip, load_ip2p
        from pairedit.visii import model_resolution

        self.sizes = sizes
        self.names = resolve_models(args.model, None, args.clip)
        self.pipe = load_ip2p(self.names.ip2p, device=args.device)
        self.clip, self.processor = load_clip(self.names.clip, device=args.device)
        self.clip_features = ClipFeatures(self.clip, self.processor)
        self.resolution = model_resolution(self.pipe)
        # the cache keys: every part that shapes a unit's outputs (a new VAE decoder reruns them)
        self.fingerprints = {"ip2p": fingerprint(self.pipe.unet, self.pipe.text_encoder, self.pipe.vae),
                             "clip": fingerprint(self.clip)}
        self.cache = Cache(args.cache)

    def config(self, unit: Unit) -> VisiiConfig:
        init = next((i for i in ("search", "bank") if unit.method.endswith(f"-{i}")), "caption")
        steps = default_steps(from_bank=init == "bank") if self.sizes.steps is None else self.sizes.steps
        return VisiiConfig(steps=steps, caption_steps=self.sizes.caption_steps,
                           search_steps=self.sizes.search_steps, loss_on=unit.loss_on,
                           seed=self.learn_seed(unit.direction), init=init)

    def noise(self, unit: Unit) -> str:
        """How the unit applies its learned instruction (§4-5's units apply both noises)."""
        return unit_noise(self.config(unit).init)

    def key(self, unit: Unit) -> str:
        d = unit.direction
        desc = {"section": unit.section, "method": unit.method, "direction": d.key, "edit": d.edit.name,
                "sample_steps": self.sizes.sample_steps, "seed": self.sizes.seed, "models": self.fingerprints}
        if unit.loss_on:  # the VISII settings, without those of an init the unit does not use
            config = asdict(self.config(unit))
            desc["visii"] = {k: v for k, v in config.items() if config["init"] == "bank" or not k.startswith("bank_")}
            if config["init"] == "bank":  # the bank's contents shape the pick
                desc["bank"] = key_of(models.instruction_bank(self.names.ip2p))
            noise = unit_noise(config["init"])  # as Context.noise, from the config already made
            if unit.section != "edit" and noise != "fixed":  # fixed-noise units keep their older keys
                desc["noise"] = noise
        if unit.section == "hybrid":
            desc["words"] = hybrid_words()
        if unit.section == "drawing":  # its records hold shares at this blur too (older ones do not)
            desc["style_blur"] = metrics.STYLE_BLUR_SIGMA
        return key_of(desc)

    def cached(self, unit: Unit) -> dict | None:
        key = self.key(unit)
        try:
            return self.cache.read(f"units/{key}.json", key)
        except CorruptEntry as err:
            print(f"eval_visii: recomputing a damaged cache entry: {err}", file=sys.stderr)
            return None

    # -- seeds (shared by every method, so rows differ by method only) --------------------------

    def test_seed(self, d: Direction, t: int) -> int:
        return stable_int(f"{self.sizes.seed}:{d.key}:test{t}")

    def learn_seed(self, d: Direction) -> int:
        return stable_int(f"{self.sizes.seed}:{d.key}:learn")

    # -- work ----------------------------------------------------------------------------------

    def learn(self, unit: Unit, init_text: str | None = None, bank: list[str] | None = None, **overrides):
        """The unit's learned instruction; ``init_text``, ``bank`` (else the model's) and ``overrides`` (fields of
        its VisiiConfig) are for compare_inits.py."""
        from pairedit.visii import learn

        words = unit.direction.instruction if (unit.section, unit.method) == EDIT_UNITS["words"] else init_text
        config = replace(self.config(unit), **overrides)
        return learn(self.pipe, self.clip, self.processor, [unit.direction.examples[0].images()], config,
                     init_text=words, model_id=self.names.ip2p, clip_id=self.names.clip, bank=bank, progress=False)

    def visii(self, inst, d: Direction, t: int, noise: str = "fixed", prompt: str | None = None):
        from pairedit.visii import apply

        return apply(self.pipe, inst, [d.tests[t].images()[0]], prompt=prompt, noise=noise, seed=self.test_seed(d, t),
                     steps=self.sizes.sample_steps, check=False)[0]

    def ip2p(self, d: Direction, t: int, text: str):
        from pairedit.editing import ip2p_edit

        return ip2p_edit(self.pipe, [d.tests[t].images()[0]], text, steps=self.sizes.sample_steps,
                         seed=self.test_seed(d, t))[0]

    def outputs(self, unit: Unit) -> tuple[list[tuple[int, str, object]], dict]:
        """[(test index, variant, output image)], extra record fields."""
        d, n = unit.direction, len(unit.direction.tests)
        if unit.method == "ip2p-vague" or (unit.section == "edit" and unit.method == "ip2p"):
            # the true instruction; for a drawing direction that is the vague "turn it into a drawing"
            return [(t, "random", self.ip2p(d, t, d.instruction)) for t in range(n)], {"instruction": d.instruction}
        if unit.section == "hybrid" and unit.method == "ip2p":
            replace, both = hybrid_words()
            return ([(t, "replace words", self.ip2p(d, t, replace)) for t in range(n)]
                    + [(t, "both in words", self.ip2p(d, t, both)) for t in range(n)]), {"instructions": [replace, both]}
        inst = self.learn(unit)
        extra = {"init_text": inst.init_text, "final_loss": inst.losses[-1] if inst.losses else None}
        if unit.section == "edit":
            return [(t, noise, self.visii(inst, d, t, noise)) for noise in NOISES for t in range(n)], extra
        noise = self.noise(unit)
        if unit.section in ("drawing", "init"):
            return [(t, noise, self.visii(inst, d, t, noise)) for t in range(n)], extra
        replace, _ = hybrid_words()
        return ([(t, "learned + words", self.visii(inst, d, t, noise, prompt=replace)) for t in range(n)]
                + [(t, "learned only", self.visii(inst, d, t, noise)) for t in range(n)]), dict(extra, prompt=replace)

    def score(self, unit: Unit, t: int, output) -> dict:
        d = unit.direction
        before, after = (fit(im, output.width) for im in d.tests[t].images())
        if unit.section != "hybrid":
            scores = score(self.clip_features, d, t, output)
        else:
            both = hybrid_afters(d.tests[t], output.width)["both"]
            scores = metrics.score_edit(before, output, true_after=both, clip=self.clip_features,
                                        example=tuple(fit(im, output.width) for im in d.examples[0].images()))
            scores["nearest_after"] = metrics.nearest_style(output, hybrid_afters(d.tests[t], output.width), input=before)
        scores["input_psnr"] = metrics.psnr(before, after, cap=metrics.PSNR_CAP_DB)
        return scores

    def compute(self, unit: Unit) -> dict:
        d = unit.direction
        t0 = time.perf_counter()
        outs, extra = self.outputs(unit)
        seconds = time.perf_counter() - t0
        key = self.key(unit)
        images, files = [], {}
        for k, (t, variant, out) in enumerate(outs):
            rel = files[f"output{k:02d}"] = f"units/{key}/{k:02d}-test{t}-{variant.replace(' ', '_')}.png"
            save_image(out, self.cache.path(rel))
            images.append({"test": t, "scene": d.tests[t].before.key, "variant": variant, "seed": self.test_seed(d, t),
                           "output": rel, "scores": self.score(unit, t, out)})
        shares, blurred = {}, {}
        for variant in dict.fromkeys(v for _, v, _ in outs):
            sel = [(t, o) for t, v, o in outs if v == variant]
            size = sel[0][1].width
            if unit.section == "drawing":
                cands = [style_candidates(d.tests[t], size) for t, _ in sel]
            elif unit.section == "hybrid":
                cands = [hybrid_afters(d.tests[t], size) for t, _ in sel]
            else:
                continue
            outputs, inputs = [o for _, o in sel], [fit(d.tests[t].images()[0], size) for t, _ in sel]
            shares[variant] = metrics.style_shares(outputs, cands, inputs=inputs)
            if unit.section == "drawing":  # the style's look, not where its lines fall (metrics.STYLE_BLUR_SIGMA)
                blurred[variant] = metrics.style_shares(outputs, cands, inputs=inputs, blur=metrics.STYLE_BLUR_SIGMA)
        record = {"key": key, "section": unit.section, "method": unit.method, "loss_on": unit.loss_on,
                  "direction": d.id, "edit": d.edit.name, "category": d.edit.category, "kind": d.kind,
                  "target_style": d.target_style if unit.section == "drawing" else None,
                  "example": d.examples[0].before.key, "seconds": round(seconds, 2), "images": images,
                  "shares": shares, **({"shares_blurred": blurred} if blurred else {}), **extra}
        return self.cache.write(f"units/{key}.json", record, files=files)


def hybrid_afters(pair: world.Pair, size: int) -> dict:
    """The true after-images of a replace test pair: both edits, the style alone, the replace alone."""
    scenes = world.CompoundEdit(HYBRID_STYLE, HYBRID_REPLACE).outcomes(pair.before)
    return {k: fit(world.render(s), size) for k, s in zip(HYBRID_CANDIDATES, scenes)}


def run_units(ctx: Context, units: list[Unit], progress: bool = True) -> tuple[list[dict], int]:
    """Compute every unit not in the cache; (records in the order of ``units``, number computed)."""
    from tqdm.auto import tqdm

    records, computed = [], 0
    bar = tqdm(units, desc="eval_visii", unit="unit", disable=not progress, dynamic_ncols=True)
    for unit in bar:
        bar.set_postfix_str(unit.label, refresh=False)
        record = ctx.cached(unit)
        if record is None:
            record = ctx.compute(unit)
            computed += 1
        records.append(record)
    return records, computed


# ----------------------------------------------------------------------------------------------
# Aggregation


def rows(records: list[dict], **match) -> list[dict]:
    """Per-image rows (image fields + record fields) of the records matching ``match``; ``variant`` selects images."""
    variant = match.pop("variant", None)
    out = []
    for r in records:
        if all(r.get(k) == v for k, v in match.items()):
            base = {k: v for k, v in r.items()
                    if k not in ("images", "shares", "shares_blurred", "files", "format", "sha256")}
            out += [dict(base, **im) for im in r["images"] if variant is None or im["variant"] == variant]
    return out


def mean(rows_: list[dict], key: str) -> float | None:
    vals = [float(r["scores"][key]) for r in rows_ if r["scores"].get(key) is not None]
    return float(np.mean(vals)) if vals else None


def fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def mean_shares(records: list[dict], variant: str, field: str = "shares") -> dict[str, float]:
    """The share of each candidate over several equally sized units (the mean of their style_shares).

    ``field``: "shares" (exact pixels) or "shares_blurred" (drawing units: ``metrics.STYLE_BLUR_SIGMA``).
    """
    shares = [r[field][variant] for r in records if variant in r.get(field, {})]
    keys = sorted(dict.fromkeys(k for s in shares for k in s), key=lambda k: (SHARE_ORDER + (k,)).index(k))
    return {k: float(np.mean([s.get(k, 0.0) for s in shares])) for k in keys}


def loss_comparison(records: list[dict]) -> dict:
    """Paired comparison of the two losses over every (direction, test, noise); the recommendation."""
    per = {loss: {(r["direction"], r["test"], r["variant"]): r for r in rows(records, section="edit", loss_on=loss)}
           for loss in LOSSES}
    common = sorted(set(per[LOSSES[0]]) & set(per[LOSSES[1]]))
    succ = {loss: [bool(per[loss][k]["scores"]["edit_success"]) for k in common] for loss in LOSSES}
    psnrs = {loss: float(np.mean([per[loss][k]["scores"]["psnr"] for k in common])) if common else None
             for loss in LOSSES}
    only_c, only_g, p = metrics.mcnemar(succ["conditional"], succ["guided"])
    rate = {loss: float(np.mean(succ[loss])) if common else None for loss in LOSSES}
    if common and p < 0.05:
        pick = "guided" if only_g > only_c else "conditional"
        why = (f"edit success {rate[pick]:.2f} vs {rate[LOSSES[1 - LOSSES.index(pick)]]:.2f} on {len(common)} paired "
               f"outputs (McNemar exact p = {p:.3g})")
    else:
        pick = "conditional"
        why = (f"the losses do not differ measurably in edit success ({fmt(rate['conditional'])} conditional vs "
               f"{fmt(rate['guided'])} guided on {len(common)} paired outputs, McNemar exact p = {p:.2g}); keep the "
               f"paper's Eq. 2 (PSNR {fmt(psnrs['conditional'])} vs {fmt(psnrs['guided'])} dB)")
    return {"n": len(common), "success": rate, "psnr": psnrs, "only_conditional": only_c, "only_guided": only_g,
            "p": p, "recommend": pick, "line": f"RECOMMENDATION: VisiiConfig.loss_on = {pick!r} — {why}."}


# ----------------------------------------------------------------------------------------------
# Report


def steps_phrase(sizes: Sizes, init: str | None = None) -> str:
    """The learning steps of ``init``'s units (None: of all units) in words."""
    if sizes.steps is not None or init is not None:
        return f"learnt for {default_steps(from_bank=init == 'bank') if sizes.steps is None else sizes.steps} steps"
    return f"learning steps {BANK_STEPS} from the bank's pick, else {PAPER_STEPS} (the library's, `visii.default_steps`)"


def table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(map(str, row)) + " |" for row in body)]


def visii_rows(records: list[dict], init: str, **match) -> list[dict]:
    """Per-image rows of the one-pair VISII units with c_T initialised by ``init`` (applied with ``unit_noise``)."""
    section, method = EDIT_UNITS[init]
    return rows(records, section=section, method=method, variant=unit_noise(init), **match)


def section_edit(records: list[dict], sizes: Sizes) -> list[str]:
    lines = ["## 1. Edit success from one example pair, per category", "",
             f"VISII: learned from one example pair (init `{DEFAULT_INIT!r}` and `loss_on={DEFAULT_LOSS!r}`, the "
             f"library defaults; the paper's caption init and the others are compared in §6), "
             f"{steps_phrase(sizes, DEFAULT_INIT)}, applied with {DEFAULT_NOISE} noise (`apply`'s default; fixed noise "
             "reuses the noises recorded while learning, §5). "
             "InstructPix2Pix: the true instruction (the edit's first wording), random noise from the same seed "
             "VISII's random-noise run uses. Edit success: the output is nearer the true after-image than the "
             "input is (pixel MSE). PSNR to the true after-image (dB); \"input\" is the unedited test image's "
             "PSNR to it (what doing nothing scores).", ""]
    body = []
    for cat in [*sizes.categories, None]:
        match = {} if cat is None else {"category": cat}
        v = visii_rows(records, DEFAULT_INIT, **match)
        i = rows(records, section="edit", method="ip2p", **match)
        body.append(["**all**" if cat is None else cat, len(v), fmt(mean(v, "edit_success")),
                     fmt(mean(i, "edit_success")), fmt(mean(v, "psnr")), fmt(mean(i, "psnr")),
                     fmt(mean(i, "input_psnr"))])
    lines += table(["category", "n", "VISII success", "IP2P success", "VISII PSNR", "IP2P PSNR", "input PSNR"], body)
    edits = sorted({(r["category"], r["edit"]) for r in records if r["section"] == "edit"})
    lines += ["", "Directions (held-out split; object edits on held-out edit/shape combinations): "
              + ", ".join(f"`{e}`" for _, e in edits) + "."]
    return lines


def section_drawing(records: list[dict]) -> list[str]:
    vague = world.Edit("drawing", value=world.DRAWING_STYLES[0]).instruction(wording=0)
    blur = f"{metrics.STYLE_BLUR_SIGMA:g}"
    lines = ["## 2. Ambiguous drawing styles (VISII Fig. 6)", "",
             "One example pair per drawing style (its after-image is that style); VISII learns it and edits new "
             f"photos. InstructPix2Pix gets the vague \"{vague}\" on the same photos with the same seeds. "
             "Each output is assigned the style whose true after-image of that photo is nearest in MSE after a "
             f"Gaussian blur of σ = {blur} px (`metrics.nearest_style` with `blur=metrics.STYLE_BLUR_SIGMA`: the "
             "style's look, paper colour, line tone and fill, rather than where each line falls), or \"none\" when "
             "the unedited photo is at least as near. \"reproduces\": share of outputs assigned the example's style. "
             "The columns marked *pixels* use exact pixels, the criterion of reports before session 26: it credits "
             "ink only when its 2-px lines sit exactly right (the true ink image shifted by 1 px is nearest ink in "
             "27% of photos, its VAE round trip in 87%; blurred: 100% both; `scripts/validate_style_metric.py`, "
             "`docs/visii/style_metric.json`), so it under-counts ink and over-counts sketch.", ""]
    body = []
    other_inits = [i for i in DRAWING_UNITS if i != DEFAULT_INIT]
    for style in world.DRAWING_STYLES:
        def of(method, style=style):
            return [r for r in records if r["section"] == "drawing" and r["method"] == method
                    and r["target_style"] == style]

        v, i = of(DRAWING_UNITS[DEFAULT_INIT]), of("ip2p-vague")
        noise = unit_noise(DEFAULT_INIT)
        vs, is_ = mean_shares(v, noise, "shares_blurred"), mean_shares(i, "random", "shares_blurred")
        others = [fmt(mean_shares(of(DRAWING_UNITS[o]), unit_noise(o), "shares_blurred").get(style))
                  for o in other_inits]
        dist = ", ".join(f"{k} {x:.2f}" for k, x in vs.items())
        body.append([style, len(rows(v)), fmt(vs.get(style)), fmt(is_.get(style)), dist, *others,
                     fmt(mean_shares(v, noise).get(style)), fmt(mean_shares(i, "random").get(style))])
    lines += table(["example style", "n", f"VISII reproduces (init `{DEFAULT_INIT}`)", "IP2P lands on it",
                    "VISII shares (all styles)", *(f"VISII, init `{o}`, reproduces" for o in other_inits),
                    f"VISII (init `{DEFAULT_INIT}`) reproduces, *pixels*", "IP2P lands on it, *pixels*"], body)
    vague_records = [r for r in records if r["section"] == "drawing" and r["method"] == "ip2p-vague"]
    n = len(rows(records, method="ip2p-vague"))

    def listed(shares: dict) -> str:
        return ", ".join(f"{k} {x:.2f}" for k, x in shares.items())

    lines += ["", f"InstructPix2Pix with \"{vague}\", all {n} photos (`metrics.style_shares`): "
              f"{listed(mean_shares(vague_records, 'random', 'shares_blurred'))}; in exact pixels "
              f"{listed(mean_shares(vague_records, 'random'))}. A method that ignores the example lands on a style "
              "as often as this vague instruction does (the IP2P column)."]
    return lines


def section_hybrid(records: list[dict]) -> list[str]:
    replace, both_words = hybrid_words()
    style_words = HYBRID_STYLE.instruction(wording=0)
    held = "a held-out" if world.is_heldout_combo(HYBRID_REPLACE) else "a training"
    lines = ["## 3. Hybrid instruction (VISII Fig. 4b)", "",
             f"VISII learns \"{style_words}\" (`{HYBRID_STYLE.name}`) from one example pair; it is applied with the "
             f"words \"{replace}\" appended after the learned tokens (`apply(prompt=...)`), to held-out photos that "
             f"contain a circle (`{HYBRID_REPLACE.name}`, {held} edit/shape combination, held-out scenes).", "",
             "**Criterion (does both edits):** the output is nearer, in pixel MSE, the true after-image of "
             "watercolour ∘ replace than the true after-image of the watercolour edit alone, than that of the "
             "replace edit alone, and than the unedited input. Computed as `metrics.style_shares` over the three "
             "true after-images with `inputs=` (\"none\": the input is nearest).", "",
             "The IP2P row with both edits in words shows whether the model follows two edits in one instruction at "
             "all; one trained on single edits rarely does (compound instructions: [models.md](models.md), "
             "session 14).", ""]
    body = []
    order = (DEFAULT_INIT, *(i for i in HYBRID_UNITS if i != DEFAULT_INIT))
    plan = [(HYBRID_UNITS[i], variant, words, f"VISII, init `{i}`") for i in order
            for variant, words in (("learned + words", f"`<ins>` + \"{replace}\""), ("learned only", "`<ins>` alone"))]
    plan += [("ip2p", "both in words", f"\"{both_words}\"", "IP2P"), ("ip2p", "replace words", f"\"{replace}\"", "IP2P")]
    for method, variant, words, name in plan:
        rec = [r for r in records if r["section"] == "hybrid" and r["method"] == method]
        sh = mean_shares(rec, variant)
        im = rows(rec, variant=variant)
        body.append([name, words, len(im), *(fmt(sh.get(k)) for k in (*HYBRID_CANDIDATES, metrics.NO_STYLE)),
                     fmt(mean(im, "psnr"))])
    lines += table(["method", "instruction", "n", "both (criterion)", "style only", "replace only", "none (input)",
                    "PSNR to both-after"], body)
    return lines


def section_loss(records: list[dict], cmp: dict) -> list[str]:
    lines = ["## 4. `loss_on`: conditional (paper Eq. 2) vs guided (reference implementation)", "",
             "Same directions, example pairs, PEZ captions (the paper's caption init), learning seeds (timesteps and "
             "noises) and test seeds; only the prediction the MSE loss is taken on differs.", ""]
    body = []
    for loss in LOSSES:
        for noise in NOISES:
            r = rows(records, section="edit", loss_on=loss, variant=noise)
            body.append([f"`{loss}`", noise, len(r), fmt(mean(r, "edit_success")), fmt(mean(r, "psnr")),
                         fmt(mean(r, "ssim"), 3)])
    lines += table(["loss_on", "noise", "n", "edit success", "PSNR", "SSIM"], body)
    lines += ["", f"Paired over {cmp['n']} outputs (both noises): only conditional succeeds on {cmp['only_conditional']}, "
              f"only guided on {cmp['only_guided']}; McNemar exact p = {cmp['p']:.3g}.", "",
              f"**{cmp['line']}**", "",
              "Rule: the loss with more successes when the paired difference is significant (p < 0.05), else the "
              "paper's Eq. 2 (`conditional`)."]
    return lines


def section_noise(records: list[dict]) -> list[str]:
    img, vis = metrics.METRIC_NAMES["clip_image_similarity"], metrics.METRIC_NAMES["visual_clip_similarity"]
    lines = ["## 5. Fixed vs random noise (VISII §5 \"Noises\")", "",
             "§4's learned instructions (caption init) applied with the noises recorded while learning (fixed) or "
             f"fresh noise from the test seed (random). {img}: cos(E(input), E(output)) with the bundled CLIP — how "
             f"much of the input is kept; {vis}: does the test image change the way the example pair does.", ""]
    body = []
    for loss in LOSSES:
        for noise in NOISES:
            r = rows(records, section="edit", loss_on=loss, variant=noise)
            body.append([f"VISII `{loss}`", noise, len(r), fmt(mean(r, "edit_success")), fmt(mean(r, "psnr")),
                         fmt(mean(r, "clip_image_similarity"), 3), fmt(mean(r, "visual_clip_similarity"), 3)])
    r = rows(records, section="edit", method="ip2p")
    body.append(["IP2P, true instruction", "random", len(r), fmt(mean(r, "edit_success")), fmt(mean(r, "psnr")),
                 fmt(mean(r, "clip_image_similarity"), 3), fmt(mean(r, "visual_clip_similarity"), 3)])
    lines += table(["method", "noise", "n", "edit success", "PSNR", img, vis], body)
    f = mean(rows(records, section="edit", loss_on=DEFAULT_LOSS, variant="fixed"), "clip_image_similarity")
    rnd = mean(rows(records, section="edit", loss_on=DEFAULT_LOSS, variant="random"), "clip_image_similarity")
    diffs = paired_differences(records, "clip_image_similarity")
    if len(diffs) > 1:
        d, se, sign = metrics.paired_difference(diffs)
        held = {1: "holds", -1: "does not hold", 0: "cannot be told from noise"}[sign]
        lines += ["", f"The paper's finding that fixed noise keeps more of the input {held} here "
                  f"(`{DEFAULT_LOSS}`: {img} {f:.3f} fixed vs {rnd:.3f} random; paired over {len(diffs)} test "
                  f"images, fixed − random = {d:+.3f} ± {se:.3f} s.e.)."]
    return lines


def section_init(records: list[dict], sizes: Sizes) -> list[str]:
    lines = ["## 6. Where c_T starts: the PEZ caption, the user's words, a search on VISII's loss, or a known "
             "instruction", "",
             "Same directions, example pairs, learning seeds and test seeds as §1; the text c_T starts from differs, "
             f"and with it the library's learning steps and noise: the bank init {steps_phrase(sizes, 'bank')} and "
             f"applied with {unit_noise('bank')} noise (§1), the others {steps_phrase(sizes, 'caption')} and "
             f"applied with {unit_noise('caption')} noise (the paper's N and its fixed noise, §5). "
             "**caption**: a PEZ caption of the after-image (the paper's init, App. C; §4 and §5 use it). "
             "**user's words**: the true instruction (its first wording) as `--init-text`, as the paper's \"GT\" "
             "rows (Table 1) mimic a user's coarse input; InstructPix2Pix given the same words is §1's IP2P column. "
             "**search**: `VisiiConfig.init = \"search\"`, PEZ's projected-gradient search over whole-word tokens "
             "(the search steps are in the sizes above) scored by VISII's MSE term on the example pair instead of by "
             "CLIP. **bank**: `VisiiConfig.init = \"bank\"`, the instruction of the bundled model's instruction bank "
             f"(`instructions.txt`: the {len(world.all_instructions())} wordings of every edit of the world, "
             "`world.all_instructions`) that scores best on the same MSE term. It holds the wordings of the held-out "
             f"(edit, shape) combinations too ({len(world.all_instructions()) - len(world.training_instructions())} "
             "of them), which no model trained on: the init is a search over what a user of this world could say, "
             "and for every direction here the bank holds its true wordings among the others. (Until session 36 "
             "the bank held the training wordings only, so it never held the true wording of an object edit here; "
             "the pick then often named the wrong shape.)", ""]
    names = {"caption": "caption (paper)", "words": "user's words", "search": "search", "bank": "bank"}
    variants = [(names[i] + (" (default)" if i == DEFAULT_INIT else ""), i)
                for i in ("caption", "words", "search", "bank")]
    by_init = {i: visii_rows(records, i) for _, i in variants}
    success = {i: {(r["direction"], r["test"]): bool(r["scores"]["edit_success"]) for r in by_init[i]}
               for _, i in variants}
    cats = sorted({r["category"] for r in rows(records, section="edit")},
                  key=lambda c: world.CATEGORIES.index(c) if c in world.CATEGORIES else 99)
    body = []
    base = success["caption"]
    for name, i in variants:
        r = by_init[i]
        by_cat = [fmt(mean([x for x in r if x["category"] == c], "edit_success")) for c in cats]
        common = sorted(set(base) & set(success[i]))
        if i == "caption" or not common:
            vs = "–"
        else:
            a, b, p = metrics.mcnemar([success[i][k] for k in common], [base[k] for k in common])
            vs = f"{a} vs {b}, p = {p:.2g}"
        body.append([name, len(r), fmt(mean(r, "edit_success")), fmt(mean(r, "psnr")), *by_cat, vs])
    lines += table(["init", "n", "edit success", "PSNR", *cats, "flipped vs caption (McNemar)"], body)
    words, ip2p = by_init["words"], rows(records, section="edit", method="ip2p")
    if words and ip2p:
        lines += ["", f"From the user's words VISII succeeds on {mean(words, 'edit_success'):.2f} of the test images, "
                  f"InstructPix2Pix given the same words without learning on {mean(ip2p, 'edit_success'):.2f}: the "
                  "1,000 steps on one pair keep a good instruction good. What one pair cannot do is single the "
                  "instruction out: a prompt can fit the example about as well as the true instruction does, by VISII's "
                  "own loss, and still not say what to do with another scene (which of several objects to shrink "
                  "when the example had one, say). So where c_T starts decides what is learned."]
    for init, label in (("search", "Searched inits"), ("bank", "Inits from the bank")):
        inits = [(r["edit"], r.get("init_text")) for r in records if (r["section"], r["method"]) == EDIT_UNITS[init]]
        if inits:
            lines += ["", f"{label}: " + "; ".join(f"`{e}`: \"{t}\"" for e, t in inits) + "."]
    return lines


def paired_differences(records: list[dict], key: str) -> list[float]:
    """Fixed − random score of each (direction, test image) for the default loss: the same image both ways."""
    by = {}
    for r in rows(records, section="edit", loss_on=DEFAULT_LOSS):
        by.setdefault((r["direction"], r["test"]), {})[r["variant"]] = r["scores"].get(key)
    return [float(v["fixed"]) - float(v["random"]) for v in by.values()
            if v.get("fixed") is not None and v.get("random") is not None]


def grid_plan(records: list[dict]) -> list[tuple]:
    """Grid rows: (label, VISII record, its variant, IP2P record, its variant, which true after)."""
    by = {(r["section"], r["direction"], r["method"]): r for r in records}
    plan = []
    for r in records:
        if r["section"] == "edit" and r["method"] == "ip2p":
            section, method = EDIT_UNITS[DEFAULT_INIT]
            plan.append((r["edit"], by[(section, r["direction"], method)], unit_noise(DEFAULT_INIT), r, "random", None))
        elif r["section"] == "drawing" and r["method"] == "ip2p-vague":
            plan.append((r["edit"], by[("drawing", r["direction"], DRAWING_UNITS[DEFAULT_INIT])],
                         unit_noise(DEFAULT_INIT), r, "random", None))
        elif r["section"] == "hybrid" and r["method"] == "ip2p":
            plan.append(("hybrid: +" + HYBRID_REPLACE.type.removeprefix("replace_"),
                         by[("hybrid", r["direction"], HYBRID_UNITS[DEFAULT_INIT])], "learned + words", r,
                         "both in words", "both"))
    return plan


def load_output(cache: Cache, record: dict, variant: str):
    from pairedit.images import load_image

    im = next(i for i in record["images"] if i["variant"] == variant)
    return im["test"], load_image(cache.path(im["output"]))


def make_grid(cache: Cache, records: list[dict], directions: dict[str, Direction], path: Path) -> None:
    """One row per direction (its first test image): example before/after | test before | VISII | IP2P | true after."""
    grid_rows, labels = [], []
    for label, vrec, vvar, irec, ivar, which in grid_plan(records):
        d = directions[vrec["direction"]]
        t, v_out = load_output(cache, vrec, vvar)
        _, i_out = load_output(cache, irec, ivar)
        size = v_out.width
        ex_b, ex_a = (fit(im, size) for im in d.examples[0].images())
        before, after = (fit(im, size) for im in d.tests[t].images())
        if which == "both":
            after = hybrid_afters(d.tests[t], size)["both"]
        elif vrec["target_style"]:  # drawing: the true after-image in the example's style
            after = style_candidates(d.tests[t], size)[vrec["target_style"]]
        grid_rows.append([ex_b, ex_a, before, v_out, i_out, after])
        labels.append(label)
    save_image(grid(grid_rows, labels=["example before", "example after", "test before", "VISII", "InstructPix2Pix",
                                       "true after"], row_labels=labels), path)


def write_report(out: Path, ctx: Context, sizes: Sizes, records: list[dict], directions: dict[str, Direction],
                 command: str, wall: float, computed: int) -> dict:
    import torch

    assets = out / ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    cmp = loss_comparison(records) if "edit" in sizes.sections else None
    results = {"command": command, "sizes": asdict(sizes), "models": asdict(ctx.names), "fingerprints": ctx.fingerprints,
               "default_loss_on": DEFAULT_LOSS, "default_init": DEFAULT_INIT, "loss_comparison": cmp,
               "rows": [{k: v for k, v in r.items() if k != "key"} for r in rows(records)],
               "shares": [{"section": r["section"], "method": r["method"], "direction": r["direction"],
                           "target_style": r["target_style"], "shares": r["shares"]} for r in records if r["shares"]]}
    atomic_write(assets / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    make_grid(ctx.cache, records, directions, assets / "grid.png")
    unit_seconds = sum(r["seconds"] for r in records)
    n_edit = len([d for d in directions.values() if d.index < 1000])
    lines = [
        "# VISII on the paired-edit world: one example pair vs InstructPix2Pix", "",
        "Written by `scripts/eval_visii.py` — do not edit by hand; rerun the command below.", "",
        "```bash", command, "```", "",
        f"- pairedit {__version__}, {datetime.date.today().isoformat()}; models: "
        f"InstructPix2Pix `{models.describe(ctx.names.ip2p, 'ip2p')}` "
        f"(fingerprint {ctx.fingerprints['ip2p']}), CLIP `{ctx.names.clip}` (fingerprint {ctx.fingerprints['clip']}), "
        f"resolution {ctx.resolution}×{ctx.resolution}; torch threads {torch.get_num_threads()}.",
        f"- Sizes: {n_edit} held-out directions ({sizes.directions_per_category} per category × "
        f"{len(sizes.categories)} categories: {', '.join(sizes.categories)}), 1 example pair and {sizes.tests} test "
        f"image(s) each; 3 drawing-style directions and 1 hybrid direction of {sizes.style_tests} test image(s); VISII "
        f"{steps_phrase(sizes)} (paper: {PAPER_STEPS}), PEZ caption init {sizes.caption_steps} steps, search init "
        f"{sizes.search_steps} steps; "
        f"{sizes.sample_steps} Euler-ancestral sampling steps, s_T = 7.5, s_I = 1.5; seed {sizes.seed}.",
        f"- Wall time of this invocation: {wall:.0f} s ({computed} of {len(records)} units computed, the rest read "
        f"from the cache); compute time of all units: {unit_seconds:.0f} s.",
        f"- Files: [`{ASSETS}/results.json`]({ASSETS}/results.json) (one row per output image, all scores), "
        f"[`{ASSETS}/grid.png`]({ASSETS}/grid.png) (below).",
        "- All test images are held-out (test-split) scenes; no model trained on them. With these sample sizes a "
        "difference of one or two images is noise: read the n column.", "",
        *(["_Sections measured: " + ", ".join(f"`{x}`" for x in sizes.sections) + " (`--sections`); the others "
            "are not in this report._", ""] if sizes.sections != SECTIONS else []),
        *([*section_edit(records, sizes), ""] if "edit" in sizes.sections else []),
        *([*section_drawing(records), ""] if "drawing" in sizes.sections else []),
        *([*section_hybrid(records), ""] if "hybrid" in sizes.sections else []),
        *([*section_loss(records, cmp), "", *section_noise(records), "", *section_init(records, sizes), ""]
          if "edit" in sizes.sections else []),
        "## Examples", "",
        "Rows: each §1 direction, each drawing style (§2: IP2P got the vague instruction; true after = the example's "
        "style), the hybrid (§3: VISII with the words, IP2P with both edits in words; true after = both edits). "
        "First test image of each.", "",
        f"![example before/after | test before | VISII | InstructPix2Pix | true after]({ASSETS}/grid.png)", ""]
    atomic_write(out / "visii.md", lambda tmp: Path(tmp).write_text("\n".join(lines)))
    return cmp


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eval_visii.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bundled",
                   help="InstructPix2Pix: 'bundled', a bundle folder with ip2p/ and clip/, a folder or a hub id "
                        "(default: %(default)s)")
    p.add_argument("--clip", default=None, help="CLIP for VISII's loss, the caption init and CLIP metrics (default: "
                   "the bundle's, else openai/clip-vit-large-patch14)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"VISII learning steps (default: the library's, {BANK_STEPS} from a bank pick, else the "
                        f"paper's {PAPER_STEPS}; --quick: {QUICK['steps']})")
    p.add_argument("--caption-steps", type=int, default=None,
                   help=f"PEZ steps of the caption init (default: {DEFAULTS['caption_steps']}; --quick: "
                        f"{QUICK['caption_steps']})")
    p.add_argument("--search-steps", type=int, default=None,
                   help=f"PEZ steps of the search init (default: {DEFAULTS['search_steps']}; --quick: "
                        f"{QUICK['search_steps']})")
    p.add_argument("--sample-steps", type=int, default=None,
                   help=f"sampling steps of VISII and IP2P (default: {DEFAULTS['sample_steps']}; --quick: "
                        f"{QUICK['sample_steps']})")
    p.add_argument("--directions-per-category", type=int, default=None,
                   help=f"held-out directions per category (default: {DEFAULTS['directions_per_category']}; --quick: "
                        f"{QUICK['directions_per_category']})")
    p.add_argument("--tests", type=int, default=None,
                   help=f"test images per direction of §1/4/5 (default: {DEFAULTS['tests']}; --quick: {QUICK['tests']})")
    p.add_argument("--style-tests", type=int, default=None,
                   help=f"test images of each drawing-style direction (§2) and of the hybrid (§3); one learning run "
                        f"each, so more cost little (default: {DEFAULTS['style_tests']}; --quick: {QUICK['style_tests']})")
    p.add_argument("--categories", default=",".join(world.CATEGORIES), metavar="A,B,...",
                   help="edit categories of §1/4/5 (default: all: %(default)s)")
    p.add_argument("--sections", default=",".join(SECTIONS), metavar="A,B,...",
                   help="what to measure: edit (§1 and §4-6), drawing (§2), hybrid (§3) (default: all: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of directions, learning and sampling (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smaller default sizes (given options still win)")
    p.add_argument("--out", default="docs", metavar="DIR", help="folder for visii.md and visii/ (default: %(default)s)")
    p.add_argument("--cache", default=".pairedit-bench-cache/eval-visii", metavar="DIR",
                   help="cache of finished units (a record and output PNGs per unit); safe to delete (default: "
                        "%(default)s)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="compute only units I, I+N, I+2N, ... (I from 0) and write no report: run N of these side by "
                        "side with the same other options, then the command without --shard writes the report")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def sizes_of(args) -> Sizes:
    base = QUICK if args.quick else DEFAULTS
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    values = {**base, **given}
    cats = tuple(c.strip() for c in args.categories.split(",") if c.strip())
    unknown = [c for c in cats if c not in world.CATEGORIES]
    if unknown or not cats:
        raise UserError(f"unknown categories {unknown}; known: {', '.join(world.CATEGORIES)}")
    for k, v in values.items():
        if v is not None and v < 1:  # steps None: the library's
            raise UserError(f"--{k.replace('_', '-')} must be ≥ 1, got {v}")
    sections = tuple(x.strip() for x in args.sections.split(",") if x.strip())
    if not sections or set(sections) - set(SECTIONS):
        raise UserError(f"--sections: unknown {sorted(set(sections) - set(SECTIONS))}; known: {', '.join(SECTIONS)}")
    return Sizes(categories=cats, seed=args.seed, sections=tuple(x for x in SECTIONS if x in sections), **values)


def command_line(argv: list[str]) -> str:
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return f"{env}python scripts/eval_visii.py {shlex.join(argv)}".rstrip()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        sizes, shard = sizes_of(args), shard_of(args.shard)
        units = make_units(sizes)  # every direction drawn before any model is loaded
        ctx = Context(args, sizes)
        if shard is not None:
            mine = units[shard[0]::shard[1]]
            _, computed = run_units(ctx, mine, progress=not args.no_progress)
            print(f"eval_visii: shard {args.shard}: {len(mine)} of {len(units)} units ({computed} computed) in "
                  f"{time.perf_counter() - t0:.0f} s; rerun without --shard to write the report")
            return 0
        records, computed = run_units(ctx, units, progress=not args.no_progress)
        directions = {u.direction.id: u.direction for u in units}
        cmp = write_report(Path(args.out), ctx, sizes, records, directions, command_line(argv),
                           time.perf_counter() - t0, computed)
    except UserError as err:
        print(f"eval_visii: error: {err}", file=sys.stderr)
        return 2
    print(f"eval_visii: {len(units)} units ({computed} computed) in {time.perf_counter() - t0:.0f} s; "
          f"wrote {Path(args.out) / 'visii.md'}, {Path(args.out) / ASSETS / 'results.json'}, "
          f"{Path(args.out) / ASSETS / 'grid.png'}")
    if cmp is not None:
        print(cmp["line"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
