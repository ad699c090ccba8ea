"""Measure image inversion and caption-driven editing: DDIM, null-text inversion (NTI) and Prompt Tuning Inversion (PTI).

Writes OUT/inversion.md, with its plots and raw numbers in OUT/inversion/ (``--out docs`` by default)::

    OMP_NUM_THREADS=2 python scripts/eval_inversion.py               # 64 held-out images, every setting
    OMP_NUM_THREADS=2 python scripts/eval_inversion.py --quick       # 8 images, fewer settings
    python scripts/eval_inversion.py --model PATH/sd --clip PATH/clip --n 16 --steps 20 --out /tmp/inv

    # two cores: one shard per core, then the report (eval_editing.py takes --shard the same way)
    OMP_NUM_THREADS=1 python scripts/eval_inversion.py --shard 0/2 &
    OMP_NUM_THREADS=1 python scripts/eval_inversion.py --shard 1/2; wait
    OMP_NUM_THREADS=1 python scripts/eval_inversion.py

On held-out world images (``training.evaluate.heldout_scenes``), each with its caption as the source
prompt, it measures the tables of PTI §4.3 (Dong et al. 2023):

- Table 2: reconstruction PSNR/SSIM of the autoencoder alone, DDIM inversion at ω = 7.5, NTI and PTI
  (each with its config class's paper defaults);
- Table 3: NTI and PTI PSNR after 1–5 iterations per timestep at β = 0.01 and 0.1;
- Table 1: DDIM inversion under guidance ω_enc (``DDIMConfig.invert_guidance``), reconstruction under ω_dec;

and editing on held-out edit pairs (``heldout_pairs``; before caption → after caption): PTI over η
(condition interpolation, Eq. 9) and DDIM-Edit, scored for fidelity to the input (PSNR, CLIP image
similarity), agreement with the target (CLIP directional similarity), PSNR to the true after-image
and edit success; plus seconds per reconstruction/edit on this CPU.

Cost (an estimate from counted UNet passes at ≈50 ms per forward pass of the bundled-size UNet on one
thread, not a measurement): ≈11 min per image for everything, mostly Table 3, so the full run is ≈12 h
and --quick ≈40 min; ``--steps 20`` divides both by ≈2.5 (but is no longer the paper's 50-step schedule).

Every finished (setting, image) is stored in OUT/inversion/results.json as soon as it is computed,
so a rerun (or a run after Ctrl-C) skips it. scripts/eval_editing.py imports the pieces below.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from pairedit import metrics, models
from pairedit.bench.suite import shard_of
from pairedit.editing import resolution
from pairedit.errors import UserError
from pairedit.images import atomic_write, fit, to_pil
from pairedit.inversion import (
    DDIMConfig,
    Inversion,
    edit,
    encode_image,
    invert,
    make_config,
    reconstruct,
)
from pairedit.sampling import decode_latents
from pairedit.training.evaluate import heldout_pairs, heldout_scenes

# The papers' numbers (Stable Diffusion 1.x, 512×512 COCO / ImageNet), printed next to ours for reference.
PAPER_TABLE1 = {0.0: (21.36, 19.79, 17.04, 14.88, 13.64), 1.0: (17.16, 21.94, 18.22, 15.47, 14.02),
                2.5: (14.51, 15.73, 18.13, 15.74, 14.24), 5.0: (11.30, 11.48, 11.70, 12.12, 12.06)}
PAPER_TABLE2 = {"AE": (26.22, 0.8564), "DDIM": (13.64, 0.4641), "NTI": (24.45, 0.8270), "PTI": (25.71, 0.8501)}
PAPER_TABLE3 = {(0.01, "NTI"): (17.05, 20.12, 22.25, 23.61, 24.45), (0.01, "PTI"): (19.36, 23.20, 24.86, 25.47, 25.71),
                (0.1, "NTI"): (23.08, 24.74, 25.62, 25.82, 25.91), (0.1, "PTI"): (24.74, 25.23, 25.78, 25.90, 25.97)}
PAPER_OMEGAS = (0.0, 1.0, 2.5, 5.0, 7.5)


@dataclass(frozen=True)
class Plan:
    """What to measure: images, DDIM steps (None = the configs' 50) and the settings of each table."""

    n: int = 64  # Table 2 (the issue asks for 64 images)
    n_sweeps: int = 16  # the first n_sweeps of them for Tables 1, 3 and the editing sweep (≈10 min per image)
    steps: int | None = None
    omegas: tuple[float, ...] = PAPER_OMEGAS  # Table 1, ω_enc × ω_dec
    iterations: tuple[int, ...] = (1, 2, 3, 4, 5)  # Table 3
    lrs: tuple[float, ...] = (0.01, 0.1)  # Table 3, β
    etas: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # PTI editing, Eq. 9


FULL = Plan()
QUICK = Plan(n=8, n_sweeps=8, omegas=(0.0, 2.5, 7.5), iterations=(1, 5), etas=(0.2, 0.6, 0.9, 1.0))


# ----------------------------------------------------------------------------------------------
# The cache: one JSON of finished (setting, image) → numbers


class Cache:
    """``{"models": id, "results": {"<setting> | <image>": {...}}}``, rewritten (atomically) after every entry.

    Results made with other models (a different ``models`` id) are dropped, not mixed in.
    """

    def __init__(self, path: Path, models_id: str):
        self.path, self.models_id = Path(path), models_id
        self.results: dict[str, dict] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("models") == models_id:
                self.results = data.get("results", {})
            else:
                print(f"{self.path}: made with other models; starting afresh", file=sys.stderr)

    @staticmethod
    def key(setting: str, item: str) -> str:
        return f"{setting} | {item}"

    def has(self, setting: str, item: str) -> bool:
        return self.key(setting, item) in self.results

    def get(self, setting: str, item: str) -> dict | None:
        return self.results.get(self.key(setting, item))

    def put(self, setting: str, item: str, numbers: dict) -> None:
        self.results[self.key(setting, item)] = numbers
        self.save()

    def save(self) -> None:
        text = json.dumps({"models": self.models_id, "results": self.results}, indent=1, sort_keys=True)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def adopt(self, path: Path, models_id: str, settings: Sequence[str] | None = None) -> int:
        """Copy the given settings' (default: all) results from another cache made with the same models (read only)."""
        path = Path(path)
        if not path.exists() or path.resolve() == self.path.resolve():
            return 0
        data = json.loads(path.read_text())
        if data.get("models") != models_id:
            return 0
        wanted = None if settings is None else set(settings)
        found = {k: v for k, v in data.get("results", {}).items()
                 if (wanted is None or k.split(" | ")[0] in wanted) and k not in self.results}
        for key, numbers in found.items():
            self.results[key] = numbers
        return len(found)

    def mean(self, setting: str, items: Sequence[str], field: str) -> float | None:
        values = [float(r[field]) for i in items if (r := self.get(setting, i)) is not None and field in r]
        return statistics.fmean(values) if values else None

    def sem(self, setting: str, items: Sequence[str], field: str) -> float | None:
        values = [float(r[field]) for i in items if (r := self.get(setting, i)) is not None and field in r]
        return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else None


def open_cache(folder: Path, models_id: str, shard: tuple[int, int] | None) -> tuple[Cache, list[Path]]:
    """The run's cache, FOLDER/results.json, having taken over the results of the ``--shard`` files in
    FOLDER, and those files (to delete once the report is written); or, for shard (I, N), that shard's
    own FOLDER/results.shard-I-of-N.json."""
    folder = Path(folder)
    if shard is not None:
        return Cache(folder / f"results.shard-{shard[0]}-of-{shard[1]}.json", models_id), []
    cache = Cache(folder / "results.json", models_id)
    files = sorted(folder.glob("results.shard-*-of-*.json"))
    if taken := sum(cache.adopt(f, models_id) for f in files):
        print(f"taking over {taken} results of --shard runs from {len(files)} file(s)")
        cache.save()
    return cache, files


def shard_items(items: Sequence, shard: tuple[int, int] | None) -> list:
    """Every N-th item for shard (I, N); all items without one."""
    return list(items) if shard is None else list(items[shard[0]::shard[1]])


@dataclass
class Job:
    """Work on one image that fills several settings at once (e.g. one inversion, many decodings).

    ``run(missing)`` returns {setting: numbers} for the settings not yet in the cache.
    """

    item: str
    settings: list[str]
    run: Callable[[list[str]], dict[str, dict]]


def run_jobs(jobs: list[Job], cache: Cache, desc: str) -> None:
    """Run the jobs with something missing (tqdm progress), storing every result as it comes."""
    from tqdm.auto import tqdm

    todo = [(job, [s for s in dict.fromkeys(job.settings) if not cache.has(s, job.item)]) for job in jobs]
    todo = [(job, missing) for job, missing in todo if missing]
    for job, missing in tqdm(todo, desc=desc, unit="job", disable=not todo):
        missing = [s for s in missing if not cache.has(s, job.item)]  # an earlier job may have filled some
        if missing:
            for setting, numbers in job.run(missing).items():
                cache.put(setting, job.item, numbers)


def timed(fn: Callable, *args, **kwargs):
    """(result, seconds of wall time)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def models_id(*modules: torch.nn.Module) -> str:
    return models.fingerprint(*modules)


# ----------------------------------------------------------------------------------------------
# Images and scores


@dataclass(frozen=True)
class Item:
    """One held-out image (``after`` is None) or edit pair, fitted to the model's resolution."""

    key: str
    before: Image.Image
    caption: str
    after: Image.Image | None = None
    after_caption: str | None = None
    instruction: str | None = None
    category: str | None = None


def scene_items(n: int, size: int) -> list[Item]:
    from pairedit.world import render

    return [Item(s.key, fit(render(s), size), s.caption) for s in heldout_scenes(n)]


def changing_pairs(n: int) -> list:
    """The first ``n`` of ``heldout_pairs`` whose true after-image differs from the before-image.

    Some held-out pairs change only the caption (a recolour inside an ink drawing renders the same
    pixels): nothing can be edited there, edit success is impossible and PSNR is infinite, so they are skipped.
    """
    m = n
    while True:
        pairs = [p for p in heldout_pairs(m) if metrics.mse(*p.images()) > 0]
        if len(pairs) >= n or m > 100 * n:
            return pairs[:n]
        m *= 2


def pair_items(n: int, size: int) -> list[Item]:
    out = []
    for p in changing_pairs(n):
        before, after = p.images()
        out.append(Item(f"{p.before.key}>{p.after.key}", fit(before, size), p.before.caption, fit(after, size),
                        p.after.caption, p.instruction, p.edit.category))
    return out


def recon_scores(image: Image.Image, output: Image.Image) -> dict:
    return {"psnr": metrics.psnr(output, image, cap=metrics.PSNR_CAP_DB), "ssim": metrics.ssim(output, image)}


def edit_scores(clip: metrics.ClipFeatures, item: Item, output: Image.Image) -> dict:
    """score_edit's metrics (CLIP image/directional similarity; PSNR, SSIM, success vs. the true after-image)
    plus the PSNR to the input."""
    scores = metrics.score_edit(item.before, output, true_after=item.after, clip=clip,
                                caption_before=item.caption, caption_after=item.after_caption)
    scores["psnr_to_input"] = metrics.psnr(output, item.before, cap=metrics.PSNR_CAP_DB)
    return scores


def identity_scores(clip: metrics.ClipFeatures, items: Sequence[Item]) -> dict:
    """The scores of returning the input unchanged: the reference point of every editing table."""
    rows = [edit_scores(clip, it, it.before) for it in items]
    return {k: statistics.fmean(float(r[k]) for r in rows) for k in rows[0]}


# ----------------------------------------------------------------------------------------------
# The autoencoder bound (PTI Table 2 "AE")


def ae_reconstruction(sd, image: Image.Image) -> Image.Image:
    """DEC(ENC(I)): the autoencoder alone, the upper bound of every latent inversion (PTI Table 2 "AE")."""
    with torch.no_grad():
        return to_pil(decode_latents(sd, encode_image(sd, image)))[0]


def with_guidance(inv: Inversion, omega: float | None) -> Inversion:
    """The inversion sampled under another ω (``None`` keeps its own)."""
    return inv if omega is None else replace(inv, config=replace(inv.config, guidance=omega))


# ----------------------------------------------------------------------------------------------
# Settings (their names are the cache keys) and jobs


def describe(cfg) -> str:
    return " ".join(f"{k}={v}" for k, v in asdict(cfg).items())


def config(method: str, plan: Plan, **overrides):
    """The method's paper defaults (its config class), with the plan's step count."""
    return make_config(method, steps=plan.steps, **overrides)


def recon_setting(method: str, cfg) -> str:
    return f"recon {method} {describe(cfg)}"


def edit_setting(method: str, cfg, eta: float | None = None) -> str:
    return f"edit {method} {describe(cfg)}" + (f" eta={eta}" if eta is not None else "")


AE_SETTING = "recon ae"


def ae_job(sd, item: Item) -> Job:
    def run(missing):
        rec, seconds = timed(ae_reconstruction, sd, item.before)
        return {AE_SETTING: {**recon_scores(item.before, rec), "seconds": seconds}}

    return Job(item.key, [AE_SETTING], run)


def recon_job(sd, item: Item, method: str, cfg, omegas_dec: Sequence[float | None] = (None,)) -> Job:
    """Invert once (under the config's ω_enc for DDIM), reconstruct under each ω_dec (None: the config's ω)."""
    by_setting = {recon_setting(method, replace(cfg, guidance=cfg.guidance if d is None else d)): d
                  for d in omegas_dec}

    def run(missing):
        inv, t_inv = timed(invert, sd, item.before, method, prompt=item.caption, config=cfg)
        out = {}
        for setting in missing:
            rec, t_rec = timed(reconstruct, sd, with_guidance(inv, by_setting[setting]))
            out[setting] = {**recon_scores(item.before, rec), "invert_s": t_inv, "sample_s": t_rec,
                            "seconds": t_inv + t_rec}
        return out

    return Job(item.key, list(by_setting), run)


def edit_job(sd, clip, item: Item, method: str, cfg, etas: Sequence[float | None] = (None,)) -> Job:
    """Invert the before-image with its caption once, then edit towards the after caption (per η for PTI)."""
    by_setting = {edit_setting(method, cfg, eta): eta for eta in etas}

    def run(missing):
        inv, t_inv = timed(invert, sd, item.before, method, prompt=item.caption, config=cfg)
        out = {}
        for setting in missing:
            eta = by_setting[setting]
            result, t_edit = timed(edit, sd, inv, item.after_caption, **({} if eta is None else {"eta": eta}))
            out[setting] = {**edit_scores(clip, item, result), "invert_s": t_inv, "sample_s": t_edit,
                            "seconds": t_inv + t_edit}
        return out

    return Job(item.key, list(by_setting), run)


# ----------------------------------------------------------------------------------------------
# The measurements


def table2_settings(plan: Plan) -> dict[str, str]:
    return {"AE": AE_SETTING,
            "DDIM": recon_setting("ddim", config("ddim", plan)),
            "NTI": recon_setting("nti", config("nti", plan)),
            "PTI": recon_setting("pti", config("pti", plan))}


def table3_settings(plan: Plan) -> dict[tuple[float, str, int], str]:
    out = {}
    for lr in plan.lrs:
        for k in plan.iterations:
            out[(lr, "NTI", k)] = recon_setting("nti", config("nti", plan, iterations=k, lr=lr))
            out[(lr, "PTI", k)] = recon_setting("pti", config("pti", plan, iterations=k, beta=lr))
    return out


def table1_settings(plan: Plan) -> dict[tuple[float, float], str]:
    base = config("ddim", plan)
    return {(e, d): recon_setting("ddim", replace(base, guidance=d, invert_guidance=e))
            for e in plan.omegas for d in plan.omegas}


def editing_settings(plan: Plan) -> dict[str, str]:
    """Label → setting of the inversion-based edits: DDIM-Edit and PTI at each η."""
    out = {"DDIM-Edit": edit_setting("ddim", config("ddim", plan))}
    for eta in plan.etas:
        out[f"PTI η = {eta:g}"] = edit_setting("pti", config("pti", plan), eta)
    return out


def inversion_edit_jobs(sd, clip, items: Sequence[Item], plan: Plan) -> list[Job]:
    """DDIM-Edit and PTI over η on edit pairs (used by eval_editing.py as well)."""
    jobs = []
    for it in items:
        jobs.append(edit_job(sd, clip, it, "ddim", config("ddim", plan)))
        jobs.append(edit_job(sd, clip, it, "pti", config("pti", plan), plan.etas))
    return jobs


def measure(sd, clip, plan: Plan, cache: Cache,
            shard: tuple[int, int] | None = None) -> tuple[list[Item], list[Item]]:
    """Fill the cache with every (setting, image) of the plan, or of every N-th image and pair for
    ``shard`` (I, N); returns all the plan's (images, pairs)."""
    size = resolution(sd)
    all_scenes, all_pairs = scene_items(plan.n, size), pair_items(plan.n_sweeps, size)
    scenes, pairs = shard_items(all_scenes, shard), shard_items(all_pairs, shard)
    sweep = shard_items(all_scenes[:plan.n_sweeps], shard)
    ddim = config("ddim", plan)
    jobs = [ae_job(sd, it) for it in scenes]
    jobs += [recon_job(sd, it, m, config(m, plan)) for it in scenes for m in ("ddim", "nti", "pti")]
    run_jobs(jobs, cache, "reconstruction (Table 2)")
    jobs = [recon_job(sd, it, "ddim", replace(ddim, invert_guidance=e), plan.omegas) for it in sweep for e in plan.omegas]
    run_jobs(jobs, cache, "ω_enc × ω_dec (Table 1)")
    jobs = []
    for lr in plan.lrs:
        for k in plan.iterations:
            jobs += [recon_job(sd, it, "nti", config("nti", plan, iterations=k, lr=lr)) for it in sweep]
            jobs += [recon_job(sd, it, "pti", config("pti", plan, iterations=k, beta=lr)) for it in sweep]
    run_jobs(jobs, cache, "iterations × β (Table 3)")
    run_jobs(inversion_edit_jobs(sd, clip, pairs, plan), cache, "editing (DDIM-Edit, PTI over η)")
    return all_scenes, all_pairs


# ----------------------------------------------------------------------------------------------
# Report: tables, plots, the document


def fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


EDIT_COLUMNS = ("clip_image_similarity", "clip_directional_similarity", "psnr_to_input", "psnr", "edit_success")
EDIT_HEADER = ("CLIP image sim. ↑ (fidelity)", "CLIP directional sim. ↑ (edit)", "PSNR to input (dB)",
               "PSNR to true after (dB) ↑", "edit success ↑")


def edit_row(cache: Cache, setting: str, keys: Sequence[str]) -> list[str]:
    """The editing columns of one setting, then seconds per edit (inversion + sampling)."""
    cells = [fmt(cache.mean(setting, keys, c), 3 if "clip" in c else 2) for c in EDIT_COLUMNS[:-1]]
    success = cache.mean(setting, keys, "edit_success")
    cells.append("–" if success is None else f"{100 * success:.0f}%")
    return cells + [fmt(cache.mean(setting, keys, "seconds"))]


def curve(cache: Cache, settings: Sequence[str], keys: Sequence[str], x: str, y: str) -> tuple[list, list]:
    pts = [(cache.mean(s, keys, x), cache.mean(s, keys, y)) for s in settings]
    pts = [p for p in pts if None not in p]
    return [p[0] for p in pts], [p[1] for p in pts]


def new_figure(ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.2), squeeze=False)
    return plt, fig, list(axes[0])


def save_figure(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def plot_table1(cache: Cache, plan: Plan, keys: Sequence[str], path: Path) -> Path:
    settings = table1_settings(plan)
    grid = [[cache.mean(settings[(e, d)], keys, "psnr") or float("nan") for d in plan.omegas] for e in plan.omegas]
    plt, fig, (ax,) = new_figure()
    im = ax.imshow(grid, cmap="viridis")
    lo, hi = im.get_clim()
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                    color="black" if v > (lo + hi) / 2 else "white")
    ax.set_xticks(range(len(plan.omegas)), [f"{w:g}" for w in plan.omegas])
    ax.set_yticks(range(len(plan.omegas)), [f"{w:g}" for w in plan.omegas])
    ax.set_xlabel("ω_dec (sampling)")
    ax.set_ylabel("ω_enc (inversion)")
    ax.set_title("DDIM inversion: reconstruction PSNR (dB)")
    fig.colorbar(im, ax=ax)
    return save_figure(plt, fig, path)


def plot_table3(cache: Cache, plan: Plan, keys: Sequence[str], path: Path) -> Path:
    settings = table3_settings(plan)
    plt, fig, (ax,) = new_figure()
    for lr, style in zip(plan.lrs, ("--", "-", ":")):
        for method, color in (("NTI", "tab:blue"), ("PTI", "tab:red")):
            ys = [cache.mean(settings[(lr, method, k)], keys, "psnr") for k in plan.iterations]
            ax.plot(plan.iterations, [float("nan") if y is None else y for y in ys], style, color=color,
                    marker="o", label=f"{method}, β = {lr:g}")
    ae = cache.mean(AE_SETTING, keys, "psnr")
    if ae is not None:
        ax.axhline(ae, color="gray", lw=1, label="AE (upper bound)")
    ax.set_xlabel("iterations per timestep N")
    ax.set_ylabel("reconstruction PSNR (dB)")
    ax.set_xticks(plan.iterations)
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)


def plot_editing(cache: Cache, plan: Plan, keys: Sequence[str], identity: dict, path: Path) -> Path:
    settings = editing_settings(plan)
    pti = [s for label, s in settings.items() if label.startswith("PTI")]
    ddim = settings["DDIM-Edit"]
    plt, fig, (ax1, ax2) = new_figure(2)
    xs, ys = curve(cache, pti, keys, "clip_directional_similarity", "clip_image_similarity")
    ax1.plot(xs, ys, "-o", color="tab:red", label="PTI over η")
    for x, y, eta in zip(xs, ys, plan.etas):
        ax1.annotate(f"η = {eta:g}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax1.plot(*curve(cache, [ddim], keys, "clip_directional_similarity", "clip_image_similarity"), "s",
             color="black", label="DDIM-Edit")
    ax1.set_xlabel("CLIP directional similarity (edit) →")
    ax1.set_ylabel("CLIP image similarity (fidelity) →")
    ax1.legend(fontsize=8)
    for field, color, label in (("psnr_to_input", "tab:green", "to the input"), ("psnr", "tab:purple", "to the true after")):
        ys = [cache.mean(s, keys, field) for s in pti]
        ax2.plot(plan.etas, [float("nan") if y is None else y for y in ys], "-o", color=color, label=f"PTI, {label}")
        d = cache.mean(ddim, keys, field)
        if d is not None:
            ax2.axhline(d, color=color, ls="--", lw=1, label=f"DDIM-Edit, {label}")
    ax2.axhline(identity["psnr"], color="gray", ls=":", lw=1, label="input itself, to the true after")
    ax2.set_xlabel("η (0 = reconstruction, 1 = the target prompt only)")
    ax2.set_ylabel("PSNR (dB)")
    ax2.legend(fontsize=7)
    return save_figure(plt, fig, path)


def command_line(script: str, argv: Sequence[str]) -> str:
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return env + " ".join(shlex.quote(a) for a in ["python", f"scripts/{script}", *argv])


def table2_section(cache: Cache, plan: Plan, keys: Sequence[str]) -> str:
    settings = table2_settings(plan)
    names = {"AE": "encode → decode", "DDIM": describe(config("ddim", plan)),
             "NTI": describe(config("nti", plan)), "PTI": describe(config("pti", plan))}
    rows, psnrs = [], {}
    for label, setting in settings.items():
        p, s = cache.mean(setting, keys, "psnr"), cache.mean(setting, keys, "ssim")
        psnrs[label] = p
        rows.append([label, f"`{names[label]}`", f"{fmt(p)} ± {fmt(cache.sem(setting, keys, 'psnr'))}",
                     fmt(s, 4), fmt(cache.mean(setting, keys, "seconds")), *map(str, PAPER_TABLE2[label])])
    measured = sorted((k for k in psnrs if psnrs[k] is not None), key=lambda k: -psnrs[k])
    ok = None not in psnrs.values() and (psnrs["AE"] >= psnrs["PTI"] > psnrs["NTI"] > psnrs["DDIM"] + 3)
    verdict = ("**held**" if ok else "**did not hold**") + " — measured order by PSNR: " + " > ".join(measured)
    return "\n".join([
        "## Reconstruction (PTI Table 2)",
        "",
        "Each method inverts the image with its caption as the source prompt and reconstructs it (ω = 7.5 "
        "while sampling; every diffusion method inverts with ω = 0, PTI §4.3). Settings are each config "
        "class's paper defaults (column 2). PSNR is mean ± standard error over the images.",
        "",
        md_table(["method", "settings", "PSNR (dB) ↑", "SSIM ↑", "s / image", "paper PSNR", "paper SSIM"], rows),
        "",
        f"Expected order AE ≥ PTI > NTI ≫ DDIM (≫ read as more than 3 dB): {verdict}.",
        "The paper's Table 2 ran NTI and PTI with N = 5 iterations and β = 0.01; that is the N = 5, "
        "β = 0.01 column of Table 3 below.",
    ])


def table3_section(cache: Cache, plan: Plan, keys: Sequence[str]) -> str:
    settings = table3_settings(plan)
    rows = []
    for lr in plan.lrs:
        for method in ("NTI", "PTI"):
            paper = PAPER_TABLE3.get((lr, method))
            cells = [fmt(cache.mean(settings[(lr, method, k)], keys, "psnr")) for k in plan.iterations]
            paper_cells = [f"{paper[k - 1]:.2f}" if paper and 1 <= k <= 5 else "–" for k in plan.iterations]
            secs = [cache.mean(settings[(lr, method, k)], keys, "seconds") for k in plan.iterations]
            rows.append([f"{method}, β = {lr:g}", *cells, fmt(secs[-1]), " / ".join(paper_cells)])
    header = ["method", *[f"N = {k}" for k in plan.iterations], f"s / image at N = {plan.iterations[-1]}",
              "paper"]
    better = [(lr, k) for lr in plan.lrs for k in plan.iterations
              if (a := cache.mean(settings[(lr, "PTI", k)], keys, "psnr")) is not None
              and (b := cache.mean(settings[(lr, "NTI", k)], keys, "psnr")) is not None and a > b]
    total = len(plan.lrs) * len(plan.iterations)
    return "\n".join([
        "## Iterations and learning rate (PTI Table 3)",
        "",
        "Reconstruction PSNR (dB) of NTI and PTI with N iterations per timestep at learning rate β (Adam, both "
        "methods); other settings are the config defaults (NTI inverts the whole diffusion, encode ratio 1.0; "
        "PTI 0.8).",
        "",
        md_table(header, rows),
        "",
        f"PTI reconstructs better than NTI in {len(better)} of {total} settings (the paper: in all).",
        "",
        "![PSNR over iterations](inversion/table3.png)",
    ])


def table1_section(cache: Cache, plan: Plan, keys: Sequence[str]) -> str:
    settings = table1_settings(plan)
    rows, diagonal_best = [], 0
    for e in plan.omegas:
        values = [cache.mean(settings[(e, d)], keys, "psnr") for d in plan.omegas]
        known = [v for v in values if v is not None]
        best = max(known) if known else None
        cells = [f"**{fmt(v)}**" if v is not None and v == best else fmt(v) for v in values]
        diagonal_best += best is not None and values[plan.omegas.index(e)] == best
        paper = PAPER_TABLE1.get(e)
        paper_cells = [f"{paper[PAPER_OMEGAS.index(d)]:.2f}" if paper and d in PAPER_OMEGAS else "–" for d in plan.omegas]
        rows.append([f"ω_enc = {e:g}", *cells, " / ".join(paper_cells)])
    return "\n".join([
        "## Guidance during inversion and sampling (PTI Table 1)",
        "",
        "DDIM inversion under guidance ω_enc with the source prompt, reconstruction under ω_dec (bold: the best "
        f"of each row). Settings: `{describe(config('ddim', plan))}` "
        "with `invert_guidance` = ω_enc and the guidance replaced by ω_dec.",
        "",
        md_table(["", *[f"ω_dec = {d:g}" for d in plan.omegas], "paper"], rows),
        "",
        f"The paper finds each row's best on the diagonal (ω_dec = ω_enc); here that held in {diagonal_best} of "
        f"{len(plan.omegas)} rows.",
        "",
        "![PSNR over ω_enc × ω_dec](inversion/table1.png)",
    ])


def editing_section(cache: Cache, plan: Plan, pairs: Sequence[Item], identity: dict) -> str:
    keys = [p.key for p in pairs]
    rows = [[label, *edit_row(cache, setting, keys)] for label, setting in editing_settings(plan).items()]
    rows.append(["input unchanged", *[fmt(identity[c], 3 if "clip" in c else 2) for c in EDIT_COLUMNS[:-1]],
                 f"{100 * identity['edit_success']:.0f}%", "0"])
    return "\n".join([
        "## Editing with a target caption (PTI Eq. 9, condition interpolation)",
        "",
        f"{len(pairs)} held-out edit pairs; source prompt = the before caption, target = the after caption. "
        "PTI edits sample with c_t ← η·c* + (1−η)·c_t from one inversion per image (η = 1 uses the target "
        "prompt alone, so it equals DDIM-Edit at the same encode ratio). Seconds per edit include the inversion.",
        "",
        md_table(["method", *EDIT_HEADER, "s / edit"], rows),
        "",
        "![PTI editing trade-off](inversion/editing.png)",
    ])


def timing_section(cache: Cache, plan: Plan, keys: Sequence[str], pair_keys: Sequence[str]) -> str:
    t2 = table2_settings(plan)
    ed = editing_settings(plan)
    pti_any = next(s for label, s in ed.items() if label.startswith("PTI"))
    rows = [[label, fmt(cache.mean(s, keys, "invert_s")), fmt(cache.mean(s, keys, "sample_s")),
             fmt(cache.mean(s, keys, "seconds"))] for label, s in t2.items()]
    rows += [[f"{label} edit", fmt(cache.mean(s, pair_keys, "invert_s")), fmt(cache.mean(s, pair_keys, "sample_s")),
              fmt(cache.mean(s, pair_keys, "seconds"))] for label, s in (("DDIM", ed["DDIM-Edit"]), ("PTI", pti_any))]
    return "\n".join([
        "## Time on this CPU",
        "",
        f"Wall seconds per image ({torch.get_num_threads()} torch threads), means over the images.",
        "",
        md_table(["method", "inversion (s)", "sampling + decoding (s)", "total (s)"], rows),
    ])


def write_report(out: Path, sd_name: str, clip_name: str, plan: Plan, cache: Cache, scenes: Sequence[Item],
                 pairs: Sequence[Item], clip, command: str) -> Path:
    keys = [s.key for s in scenes]
    sweep = keys[:plan.n_sweeps]
    steps = models.trained_steps(sd_name, "sd")
    trained = "" if steps is None else f", UNet trained {steps:,} steps"
    figures = out / "inversion"
    identity = identity_scores(clip, pairs)
    plot_table1(cache, plan, sweep, figures / "table1.png")
    plot_table3(cache, plan, sweep, figures / "table3.png")
    plot_editing(cache, plan, [p.key for p in pairs], identity, figures / "editing.png")
    text = "\n\n".join([
        "# Inversion and caption-driven editing: DDIM, null-text inversion, Prompt Tuning Inversion",
        f"Measured by `scripts/eval_inversion.py` on the text-to-image model `{sd_name}`{trained} (CLIP metrics: "
        f"`{clip_name}`), {len(scenes)} held-out world images (`training.evaluate.heldout_scenes`; Table 2 uses "
        f"all of them, Tables 1 and 3 the first {len(sweep)}) and {len(pairs)} held-out edit pairs "
        "(`heldout_pairs`, without the pairs whose after-image equals the "
        f"before-image), {plan.steps or DDIMConfig().steps}-step DDIM "
        "schedules. The paper's numbers (Stable Diffusion at 512×512 on COCO) are shown for reference only: "
        "the model, the images and their size differ.",
        f"Command:\n\n```bash\n{command}\n```\n\nRaw numbers, one entry per (setting, image): "
        "[`inversion/results.json`](inversion/results.json); a rerun skips every entry already there.",
        table2_section(cache, plan, keys),
        table3_section(cache, plan, sweep),
        table1_section(cache, plan, sweep),
        editing_section(cache, plan, pairs, identity),
        timing_section(cache, plan, keys, [p.key for p in pairs]),
    ]) + "\n"
    path = out / "inversion.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


# ----------------------------------------------------------------------------------------------
# Command line


def parser(description: str = __doc__.split("\n\n")[0],
           steps_help: str = "DDIM steps of every method (default: the configs' 50)") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="bundled", help="text-to-image model: 'bundled' or an SD 1.x folder / hub id")
    p.add_argument("--clip", default="bundled", help="CLIP model for the CLIP metrics (default: bundled)")
    p.add_argument("--n", type=int, default=None, help=f"held-out images and edit pairs (default: {FULL.n}, "
                                                       f"--quick {QUICK.n})")
    p.add_argument("--n-sweeps", type=int, default=None,
                   help=f"images for Tables 1, 3 and edit pairs for the sweeps (default: {FULL.n_sweeps}, at most --n)")
    p.add_argument("--steps", type=int, default=None, help=steps_help)
    p.add_argument("--quick", action="store_true", help="fewer images and settings (see QUICK in the script)")
    p.add_argument("--out", default="docs", help="folder for the document; plots and JSON go in a subfolder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="compute every N-th image and pair only, into OUT/<name>/results.shard-I-of-N.json, and "
                        "write no report; run the N shards side by side with the same other options, then the "
                        "command without --shard takes over their results and writes the report")
    return p


def shard_arg(args: argparse.Namespace, script: str) -> tuple[int, int] | None:
    try:
        return shard_of(args.shard)
    except UserError as err:
        raise SystemExit(f"{script}: {err}") from None


def finish_shard(args: argparse.Namespace, cache: Cache) -> Path:
    print(f"shard {args.shard}: results in {cache.path}; rerun without --shard to write the report")
    return cache.path


def make_plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    if args.n is not None and args.n < 2:
        raise SystemExit("--n must be at least 2")
    n = args.n or plan.n
    return replace(plan, n=n, n_sweeps=min(n, args.n_sweeps or plan.n_sweeps), steps=args.steps)


def main(argv: Sequence[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    plan = make_plan(args)
    shard = shard_arg(args, "eval_inversion.py")  # a bad --shard fails before the models load
    sd = models.load_sd(args.model, device=args.device)
    clip_model, processor = models.load_clip(args.clip, device=args.device)
    clip = metrics.ClipFeatures(clip_model, processor)
    out = Path(args.out)
    cache, shard_files = open_cache(out / "inversion", models_id(sd.unet, sd.vae, sd.text_encoder, clip_model), shard)
    scenes, pairs = measure(sd, clip, plan, cache, shard)
    if shard is not None:
        return finish_shard(args, cache)
    path = write_report(out, args.model, args.clip, plan, cache, scenes, pairs, clip,
                        command_line("eval_inversion.py", argv))
    for f in shard_files:
        f.unlink()  # taken over into results.json
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
