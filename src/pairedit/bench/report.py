"""The report: ``benchmark.md`` plus figures and ``results.json`` in ``benchmark/``, from cached records only.

- Table 1 as in VISII (CLIP image / directional / visual similarity under random and fixed noise),
  then the same rows with the ground-truth columns the paired-edit world allows (PSNR and SSIM to
  the true after-image, edit success, style accuracy on drawing-style directions);
- the paper's qualitative findings, each checked on paired differences and stated "held" / "not held" (a difference
  beyond two standard errors) or "not measurable" (within them);
- a per-category breakdown, Fig. 7-style histograms, example grids;
- the exact command, package version, sizes, models and wall time.
Column names come from ``metrics.METRIC_NAMES``.
"""

from __future__ import annotations

import datetime
import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .. import __version__
from ..images import atomic_write, fit, grid, save_image
from ..metrics import METRIC_NAMES, paired_difference
from ..models import describe
from .methods import METHODS
from .suite import KINDS, Plan

CLIP_KEYS = ("clip_image_similarity", "clip_directional_similarity", "visual_clip_similarity")
GT_KEYS = ("psnr", "ssim", "edit_success")
STYLE_KEY = "style_accuracy"  # share of drawing-style outputs whose nearest drawing style is the example's
LABELS = {**METRIC_NAMES, STYLE_KEY: "Style accuracy", "seconds": "s / edit"}
NOISES = ("random", "fixed")
ASSETS = "benchmark"  # folder next to benchmark.md

# VISII Table 1 (Clean-InstructPix2Pix, Stable-Diffusion-scale models): random img/dir/visual, fixed img/dir/visual.
# Only the signs of differences are comparable with this benchmark, never the absolute values.
PAPER_TABLE1: dict[str, tuple[float, ...]] = {
    "ip2p": (0.824, 0.196, 0.301),
    "ip2p-caption": (0.866, 0.090, 0.199),
    "visii-mse-gt-1p": (0.841, 0.120, 0.247, 0.854, 0.105, 0.223),
    "visii-mse-cap-1p": (0.845, 0.115, 0.254, 0.861, 0.110, 0.225),
    "visii-mseclip-gt-1p": (0.838, 0.131, 0.231, 0.852, 0.102, 0.236),
    "visii-mseclip-cap-1p": (0.823, 0.126, 0.299, 0.847, 0.113, 0.251),
    "visii-mseclip-cap-2p": (0.791, 0.141, 0.292, 0.826, 0.117, 0.253),
    "visii-mseclip-cap-3p": (0.780, 0.148, 0.283, 0.805, 0.132, 0.256),
    "visii-mseclip-cap-4p": (0.798, 0.148, 0.280, 0.812, 0.133, 0.260),
}

FIG_METHODS = ("ip2p", "sdedit", "pti", "visii-mseclip-cap-1p-random", "visii-mseclip-cap-1p-fixed")
GRID_METHODS = ("ip2p", "ip2p-caption", "sdedit", "pti", "visii-mseclip-cap-1p-random", "visii-mseclip-cap-1p-fixed",
                "visii-mseclip-cap-4p-fixed")


# ----------------------------------------------------------------------------------------------
# Aggregation


def unit_value(record: dict, key: str) -> float | None:
    """One metric of one unit as a number (edit success 0/1; style accuracy only on drawing-style units)."""
    s = record["scores"]
    if key == STYLE_KEY:
        return float(s["nearest_style"] == record["target_style"]) if record.get("target_style") else None
    if key == "seconds":
        return record.get("seconds")
    v = s.get(key)
    return None if v is None else float(v)


def mean_of(records: list[dict], key: str) -> tuple[float | None, int]:
    vals = [v for r in records if (v := unit_value(r, key)) is not None]
    return (float(np.mean(vals)) if vals else None), len(vals)


def aggregate(records: list[dict]) -> dict:
    """{method: {metric: mean, 'n': units, 'per_kind': {kind: {metric: mean, 'n': ...}}}}."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_method[r["method"]].append(r)
    out = {}
    keys = (*CLIP_KEYS, *GT_KEYS, STYLE_KEY, "seconds")
    for name, rs in by_method.items():
        entry: dict = {"n": len(rs)}
        for k in keys:
            entry[k], entry[f"n_{k}"] = mean_of(rs, k)
        per_kind: dict[str, dict] = {}
        for kind in KINDS:
            krs = [r for r in rs if r["kind"] == kind]
            if krs:
                per_kind[kind] = {"n": len(krs), **{k: mean_of(krs, k)[0] for k in keys}}
        entry["per_kind"] = per_kind
        style = {}
        for label, pred in (("vague", lambda r: r["kind"] == "drawing"), ("named", lambda r: r["kind"] != "drawing")):
            value, n = mean_of([r for r in rs if pred(r)], STYLE_KEY)
            style[label] = {"accuracy": value, "n": n}
        entry["style_by_instruction"] = style
        out[name] = entry
    return out


# ----------------------------------------------------------------------------------------------
# Findings: the paper's claims, on paired differences (same direction, same test image)


@dataclass(frozen=True)
class Finding:
    claim: str
    source: str
    comparisons: tuple[tuple[str, str], ...]  # (baseline method, method claimed to be higher)
    metrics: tuple[str, ...]


def _findings() -> list[Finding]:
    one = [(i, n) for i in ("gt", "cap") for n in NOISES]
    rows = sorted({m.row for m in METHODS.values() if m.name.startswith("visii-")})
    return [
        Finding("The CLIP loss raises directional and visual similarity", "§5 Losses, Table 1 rows 1p MSE vs MSE + CLIP",
                tuple((f"visii-mse-{i}-1p-{n}", f"visii-mseclip-{i}-1p-{n}") for i, n in one),
                ("clip_directional_similarity", "visual_clip_similarity")),
        Finding("Caption init beats instruction init on visual and image similarity", "§5 Initialization",
                tuple((f"visii-{loss}-gt-1p-{n}", f"visii-{loss}-cap-1p-{n}") for loss in ("mse", "mseclip")
                      for n in NOISES),
                ("visual_clip_similarity", "clip_image_similarity")),
        Finding("Fixed noise raises image similarity", "§5 Noises, Table 1 random vs fixed columns",
                tuple((f"{r}-random", f"{r}-fixed") for r in rows), ("clip_image_similarity",)),
        Finding("More pairs raise directional similarity", "Table 1, 1 → 4 pairs (MSE + CLIP, caption init)",
                tuple((f"visii-mseclip-cap-1p-{n}", f"visii-mseclip-cap-4p-{n}") for n in NOISES),
                ("clip_directional_similarity",)),
    ]


FINDINGS = _findings()


def _paper_value(method: str, metric: str) -> float | None:
    m = METHODS[method]
    vals = PAPER_TABLE1.get(m.row)
    if vals is None or metric not in CLIP_KEYS:
        return None
    i = CLIP_KEYS.index(metric) + (3 if m.noise == "fixed" else 0)
    return vals[i] if i < len(vals) else None


def check_finding(f: Finding, records: list[dict]) -> dict:
    """Mean paired difference (higher − baseline) ± its standard error per metric, and the verdict."""
    index = {(r["method"], r["direction"], r["test"]): r for r in records}
    ran = {r["method"] for r in records}
    comps = [(a, b) for a, b in f.comparisons if a in ran and b in ran]
    result: dict = {"claim": f.claim, "source": f.source, "comparisons": comps, "metrics": {}}
    if not comps:
        result["verdict"] = "not checked"
        result["why"] = "needs " + ", ".join(sorted({m for c in f.comparisons for m in c} - ran)[:4])
        return result
    held, contradicted = True, False
    for metric in f.metrics:
        diffs = []
        for a, b in comps:
            for (m, d, t), ra in index.items():
                if m == a and (b, d, t) in index:
                    va, vb = unit_value(ra, metric), unit_value(index[(b, d, t)], metric)
                    if va is not None and vb is not None:
                        diffs.append(vb - va)
        mean, se, sign = paired_difference(diffs)
        paper = [(pb - pa) for a, b in comps if (pa := _paper_value(a, metric)) is not None
                 and (pb := _paper_value(b, metric)) is not None]
        result["metrics"][metric] = {"mean_difference": mean, "standard_error": se, "n": len(diffs),
                                     "paper_difference": float(np.mean(paper)) if paper else None}
        held, contradicted = held and sign > 0, contradicted or sign < 0
    result["verdict"] = "held" if held else "not held" if contradicted else "not measurable"
    return result


# ----------------------------------------------------------------------------------------------
# Markdown


def _fmt(value, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key in ("edit_success", STYLE_KEY):
        return f"{100 * value:.0f}%"
    if key == "psnr":
        return f"{value:.1f}"
    if key == "seconds":
        return f"{value:.1f}"
    return f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _row_description(row: str) -> list[str]:
    """(#, losses, init, method) columns of a Table 1 row."""
    if row.startswith("visii-"):
        _, loss, init, n = row.split("-")
        return [n.removesuffix("p"), "MSE" if loss == "mse" else "MSE + CLIP", "GT" if init == "gt" else "Cap.", "VISII"]
    names = {"ip2p": ("", "", "GT", "InstructPix2Pix, no training"),
             "ip2p-caption": ("", "", "Cap.", "InstructPix2Pix, no training"),
             "sdedit": ("", "", "", "SDEdit (after-caption)"), "pti": ("", "", "", "PTI (after-caption)")}
    return list(names[row])


def _rows(plan: Plan) -> list[str]:
    return list(dict.fromkeys(m.row for m in plan.methods))


def _method_of(row: str, noise: str) -> str | None:
    for m in METHODS.values():
        if m.row == row and m.noise == noise:
            return m.name
    return None


def table1(plan: Plan, agg: dict, keys: tuple[str, ...], with_n: bool = False) -> str:
    header = ["#", "Losses", "Init.", "Method"]
    for noise in NOISES:
        header += [f"{LABELS[k]} ({noise})" for k in keys]
    if with_n:
        header.append("n")
    rows = []
    for row in _rows(plan):
        cells = _row_description(row)
        n = 0
        for noise in NOISES:
            name = _method_of(row, noise)
            entry = agg.get(name) if name else None
            n = max(n, entry["n"]) if entry else n
            cells += [_fmt(entry[k], k) if entry else "–" for k in keys]
        if with_n:
            cells.append(str(n))
        rows.append(cells)
    return _table(header, rows)


def paper_table() -> str:
    header = ["#", "Losses", "Init.", "Method"] + [f"{LABELS[k]} ({n})" for n in NOISES for k in CLIP_KEYS]
    rows = []
    for row, vals in PAPER_TABLE1.items():
        vals = list(vals) + [None] * (6 - len(vals))
        rows.append(_row_description(row) + [_fmt(v, "x") for v in vals])
    return _table(header, rows)


def per_category_table(plan: Plan, agg: dict, key: str) -> str:
    kinds = [k for k in KINDS if any(d.kind == k for d in plan.directions)]
    header = ["Method"] + [f"{k} (n={sum(len(d.tests) for d in plan.directions if d.kind == k)})" for k in kinds]
    rows = []
    for m in plan.methods:
        entry = agg.get(m.name, {}).get("per_kind", {})
        rows.append([f"`{m.name}`"] + [_fmt(entry.get(k, {}).get(key), key) for k in kinds])
    return _table(header, rows)


def style_table(plan: Plan, agg: dict) -> str:
    if not any(d.target_style for d in plan.directions):
        return "(No drawing-style directions in this run.)"
    header = ["Method", "vague \"turn it into a drawing\"", "named drawing style (sketch / ink / watercolor)"]
    rows = []
    for m in plan.methods:
        s = agg.get(m.name, {}).get("style_by_instruction", {})
        cells = [f"`{m.name}`"]
        for part in ("vague", "named"):
            v = s.get(part, {})
            cells.append(f"{_fmt(v.get('accuracy'), STYLE_KEY)} (n={v.get('n', 0)})" if v.get("n") else "–")
        rows.append(cells)
    return _table(header, rows)


def finding_text(res: dict) -> str:
    head = f"- **{res['claim']}** ({res['source']}): **{res['verdict']}**"
    if res["verdict"] == "not checked":
        return head + f" — {res['why']} (not run)."
    parts = []
    for metric, v in res["metrics"].items():
        within = "" if not (v["standard_error"] > 0) or abs(v["mean_difference"]) >= 2 * v["standard_error"] \
            else ", within noise (|Δ| < 2 SE)"
        paper = "" if v["paper_difference"] is None else f"; paper Δ {v['paper_difference']:+.3f}"
        parts.append(f"{LABELS[metric]} Δ {v['mean_difference']:+.4f} ± {v['standard_error']:.4f} SE "
                     f"(n = {v['n']} paired edits{within}{paper})")
    pairs = ", ".join(f"`{b}` vs `{a}`" for a, b in res["comparisons"])
    return head + " — " + "; ".join(parts) + f". Compared: {pairs}."


# ----------------------------------------------------------------------------------------------
# Figures


def histograms(plan: Plan, records: list[dict], keys: tuple[str, ...], path: Path, title: str) -> Path | None:
    """One panel per metric, one step histogram per method (VISII Fig. 7)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in FIG_METHODS if any(r["method"] == m for r in records)]
    if not methods:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4))
    for ax, key in zip(np.atleast_1d(axes), keys):
        vals = {m: [v for r in records if r["method"] == m and (v := unit_value(r, key)) is not None] for m in methods}
        flat = [v for vs in vals.values() for v in vs]
        if not flat:
            continue
        bins = np.linspace(min(flat), max(flat) + 1e-9, 16)
        for m, vs in vals.items():
            ax.hist(vs, bins=bins, histtype="step", linewidth=1.6, label=m)
        ax.set_xlabel(LABELS[key])
        ax.set_ylabel("test edits")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def example_grid(plan: Plan, records: list[dict], path: Path) -> Path | None:
    """One row per kind (its first direction, first test image): examples, input, truth, outputs."""
    index = {(r["method"], r["direction"], r["test"]): r for r in records}
    methods = [m for m in GRID_METHODS if any(r["method"] == m for r in records)]
    firsts = {}
    for d in plan.directions:
        firsts.setdefault(d.kind, d)
    rows, labels = [], []
    for d in firsts.values():
        outs = [Image.open(index[(m, d.id, 0)]["output_path"]).convert("RGB") for m in methods]
        size = outs[0].width if outs else 64
        ex_b, ex_a = (fit(im, size) for im in d.examples[0].images())
        b, a = (fit(im, size) for im in d.tests[0].images())
        rows.append([ex_b, ex_a, b, a, *outs])
        labels.append(d.edit.name)
    if not rows:
        return None
    cols = ["example before", "example after", "test input", "true after"] + \
        [m.replace("visii-mseclip-cap-", "visii ") for m in methods]
    return save_image(grid(rows, labels=cols, row_labels=labels, cell=96), path)


# ----------------------------------------------------------------------------------------------
# The report


def launch_command(command: str, num_processes: int) -> str:
    """The command as typed: under several processes, the accelerate launcher in front of it."""
    if num_processes <= 1:
        return command
    return f"accelerate launch --multi_gpu --num_processes {num_processes} -m pairedit.cli " + \
        command.removeprefix("pairedit ")


def write_report(plan: Plan, records: list[dict], info) -> Path:
    """Write ``<out>/benchmark.md``, ``<out>/benchmark/*.png`` and ``<out>/benchmark/results.json``."""
    cfg, suite = plan.config, plan.suite
    out = Path(cfg.out)
    assets = out / ASSETS
    agg = aggregate(records)
    findings = [check_finding(f, records) for f in FINDINGS]
    fig_clip = histograms(plan, records, CLIP_KEYS, assets / "fig7_clip_histograms.png",
                          "CLIP similarities of the test edits (cf. VISII Fig. 7)")
    fig_gt = histograms(plan, records, ("psnr", "ssim"), assets / "gt_histograms.png",
                        "Ground truth: similarity of the output to the true after-image")
    fig_grid = example_grid(plan, records, assets / "examples.png")
    n_dirs = len(plan.directions)
    n_tests = sum(len(d.tests) for d in plan.directions)
    n_examples = sum(len(d.examples) for d in plan.directions)
    stats = info.stats
    compute = sum(r.get("seconds") or 0 for r in records)
    kinds = {k: sum(d.kind == k for d in plan.directions) for k in KINDS}
    results = {"version": __version__, "command": cfg.command, "suite": asdict(suite), "seed": cfg.seed,
               "sizes": {"directions": n_dirs, "example_pairs": n_examples, "test_images": n_tests,
                         "pairs_total": n_examples + n_tests, "units": len(records), "directions_per_kind": kinds},
               "models": {"ip2p": info.names.ip2p, "sd": info.names.sd, "clip": info.names.clip,
                          "fingerprints": info.fingerprints},
               "methods": agg, "skipped_methods": plan.skipped, "findings": findings,
               "processes": info.num_processes, "wall_seconds": info.wall_seconds,
               "unit_compute_seconds": compute, "this_run": asdict(stats)}
    assets.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1, sort_keys=True, default=str)
    atomic_write(assets / "results.json", lambda tmp: Path(tmp).write_text(text))

    def rel(p: Path | None) -> str:
        return str(p.relative_to(out)) if p is not None else ""

    md = [
        "# Benchmark: VISII Table 1 on the paired-edit world",
        "",
        "Written by `pairedit bench` (`pairedit.bench`); do not edit by hand — run the command below again.",
        "",
        f"- Command: `{launch_command(cfg.command or 'pairedit bench', info.num_processes)}`",
        f"- pairedit {__version__}, written {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- Suite **{suite.name}**: {n_dirs} edit directions of the held-out split "
        f"({', '.join(f'{k} {v}' for k, v in kinds.items() if v)}), {suite.pairs} example pairs and "
        f"{suite.tests} test image(s) each: {n_examples} example pairs, {n_tests} test images, "
        f"{n_examples + n_tests} pairs in all; {len(plan.methods)} methods, {len(records)} work units "
        "(method × direction × test image).",
        f"- VISII: {suite.visii_steps} learning steps (the paper uses 1000), PEZ caption init {suite.caption_steps} "
        f"steps; sampling {suite.sample_steps} Euler-ancestral steps (InstructPix2Pix, VISII); SDEdit "
        f"{suite.sdedit_steps} DDIM steps at strength 0.75; PTI {suite.pti_steps} DDIM steps; seed {cfg.seed}.",
        f"- Models: InstructPix2Pix `{describe(info.names.ip2p, 'ip2p')}` ({info.fingerprints['ip2p']}), text-to-image "
        f"`{info.names.sd}` ({info.fingerprints['sd']}), CLIP `{info.names.clip}` ({info.fingerprints['clip']}).",
        f"- Wall time of this run: {info.wall_seconds / 60:.1f} min; units computed now {stats.computed} "
        f"(main process), reused from the cache {stats.reused}, corrupt entries recomputed {stats.corrupt}; "
        f"summed per-unit compute time (all runs, all processes, including learning): {compute / 60:.1f} min.",
    ]
    if plan.skipped:
        md.append("- Not run: " + "; ".join(f"`{m}` ({why})" for m, why in plan.skipped.items()) + ".")
    md += [
        "",
        "## Table 1 — CLIP similarities",
        "",
        "Rows as VISII Table 1 (#: example pairs learned from; Init.: GT = the true instruction, Cap. = a PEZ "
        "caption of the after-image(s)); baselines sample with random noise only. Means over all test edits.",
        "",
        table1(plan, agg, CLIP_KEYS, with_n=True),
        "",
        "## Table 1, continued — ground truth",
        "",
        f"The world knows the true after-image of every test edit. {LABELS['psnr']} and {LABELS['ssim']} compare the "
        f"output with it; {LABELS['edit_success']}: the output is nearer the true after-image than the input is "
        f"(pixel MSE); {LABELS[STYLE_KEY]}: on drawing-style directions (the vague \"turn it into a drawing\" and the "
        "named sketch / ink / watercolor edits), the share of outputs whose nearest drawing style is the one the "
        "examples show (chance ≈ 33%; outputs nearer the unedited input count as wrong). s / edit: compute seconds "
        "per unit (a VISII row's learning is counted in its first unit).",
        "",
        table1(plan, agg, (*GT_KEYS, STYLE_KEY, "seconds")),
        "",
        "## The paper's findings, checked",
        "",
        "Each claim is tested on paired differences (the same test image edited by the two methods compared), "
        "averaged over the comparisons listed; \"held\" means every named metric's mean difference is positive. "
        "SE: standard error of the mean difference. \"paper Δ\": the same difference in the paper's Table 1.",
        "",
        *[finding_text(r) for r in findings],
        "",
        "## Per category",
        "",
        f"{LABELS['edit_success']} by direction kind (n = test edits per kind):",
        "",
        per_category_table(plan, agg, "edit_success"),
        "",
        f"{LABELS['visual_clip_similarity']} by direction kind:",
        "",
        per_category_table(plan, agg, "visual_clip_similarity"),
        "",
        f"{LABELS[STYLE_KEY]} on drawing-style directions, by how the edit is worded (VISII Fig. 6: one vague "
        "instruction, several right answers; an example pair says which):",
        "",
        style_table(plan, agg),
        "",
        "## Histograms",
        "",
    ]
    if fig_clip:
        md += [f"![CLIP similarity histograms]({rel(fig_clip)})", ""]
    if fig_gt:
        md += [f"![Ground-truth histograms]({rel(fig_gt)})", ""]
    md += ["## Examples", ""]
    if fig_grid:
        md += ["First direction of each kind, first test image: example pair, test input, true after, then outputs.",
               "", f"![Example edits]({rel(fig_grid)})", ""]
    md += ["## Methods", "", _table(["Method", "What it is"], [[f"`{m.name}`", m.label] for m in plan.methods]), "",
           "## For reference: the paper's Table 1", "",
           "Clean-InstructPix2Pix images and Stable-Diffusion-scale models; absolute values are not comparable with "
           "the tables above (different data, models and CLIP), only the signs of differences are. The paper writes "
           "Visual CLIP similarity as 1 − cos but treats it as a similarity; pairedit reports cos "
           "(see `pairedit.metrics.visual_clip_similarity`).", "",
           paper_table(), ""]
    path = out / "benchmark.md"
    text_md = "\n".join(md)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text_md))
    return path
