"""Measure text-driven editing: InstructPix2Pix, SDEdit, DDIM-Edit and Prompt Tuning Inversion, as trade-off curves.

Writes OUT/editing.md, with its plots and raw numbers in OUT/editing/ (``--out docs`` by default)::

    OMP_NUM_THREADS=2 python scripts/eval_editing.py                 # 16 held-out edit pairs, every setting
    OMP_NUM_THREADS=2 python scripts/eval_editing.py --quick         # 8 pairs, fewer settings
    python scripts/eval_editing.py --ip2p PATH/ip2p --sd PATH/sd --clip PATH/clip --n 16 --out /tmp/edit

    # two cores: one shard per core (each pair's settings in one process), then the report
    OMP_NUM_THREADS=1 python scripts/eval_editing.py --shard 0/2 &
    OMP_NUM_THREADS=1 python scripts/eval_editing.py --shard 1/2; wait
    OMP_NUM_THREADS=1 python scripts/eval_editing.py

On held-out world edit pairs (instruction, before/after captions and the true after-image all known),
each method is swept over the setting that trades fidelity to the input against the strength of the edit,
as in InstructPix2Pix Fig. 8:

- InstructPix2Pix (written instruction) over image guidance s_I ∈ [1.0, 2.2] at text guidance s_T = 7.5,
  and the same sweep at a few other s_T as separate curves;
- SDEdit (after caption, text-to-image model) over strength ∈ [0.3, 0.9];
- DDIM-Edit and PTI over η (before caption → after caption), from scripts/eval_inversion.py.

Cost, measured in session 16 on the 2-core EPYC at one thread (another single-thread job on the other
core): 12 min of wall time for the full run on the bundled models (≈37 s of jobs per pair: InstructPix2Pix's 21
settings 3.8 min in all, SDEdit 1.3 min, DDIM-Edit and PTI 4.8 min); less when eval_inversion.py already
made the DDIM-Edit/PTI edits.

Each point: CLIP image similarity to the input (fidelity), CLIP directional similarity (agreement with the
caption change), PSNR to the true after-image, edit success rate, seconds per edit on this CPU. Every
finished (setting, pair) goes to OUT/editing/results.json at once, so a rerun skips it; DDIM-Edit/PTI
results already in OUT/inversion/results.json (same models) are reused.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pairedit import metrics, models
from pairedit.editing import EditConfig, SDEditConfig, ip2p_edit, resolution, sdedit
from pairedit.images import atomic_write, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_inversion as ei  # noqa: E402  (the sibling script: Cache, jobs, scores, tables, plots)


@dataclass(frozen=True)
class Plan:
    """Pairs, step counts (None = each method's default) and the sweep of each method."""

    n: int = 16  # ≈3 min per pair for every curve on this CPU; the same pairs as eval_inversion's editing sweep
    steps: int | None = None  # IP2P default 20 Euler-ancestral steps, SDEdit/DDIM/PTI 50 DDIM steps
    s_images: tuple[float, ...] = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2)  # IP2P Fig. 8
    s_texts: tuple[float, ...] = (5.0, 7.5, 10.0)  # 7.5 is Fig. 8's; the others are extra curves
    strengths: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # SDEdit in IP2P Fig. 8
    inversion: ei.Plan = ei.FULL  # its etas (and steps) drive DDIM-Edit and PTI

    def inversion_plan(self) -> ei.Plan:
        return replace(self.inversion, n=self.n, n_sweeps=self.n, steps=self.steps)


FULL = Plan()
QUICK = Plan(n=8, s_images=(1.0, 1.6, 2.2), s_texts=(5.0, 7.5), strengths=(0.3, 0.6, 0.9), inversion=ei.QUICK)
SEED = 0  # IP2P's sampling noise and SDEdit's added noise, the same for every pair


# ----------------------------------------------------------------------------------------------
# Settings and jobs (DDIM-Edit and PTI: eval_inversion.inversion_edit_jobs)


def ip2p_config(plan: Plan, s_text: float, s_image: float) -> EditConfig:
    return EditConfig(steps=plan.steps or EditConfig().steps, s_text=s_text, s_image=s_image, seed=SEED)


def sdedit_config(plan: Plan, strength: float) -> SDEditConfig:
    return SDEditConfig(strength=strength, steps=plan.steps or SDEditConfig().steps, seed=SEED)


def ip2p_settings(plan: Plan) -> dict[tuple[float, float], str]:
    return {(t, i): f"ip2p {ei.describe(ip2p_config(plan, t, i))}" for t in plan.s_texts for i in plan.s_images}


def sdedit_settings(plan: Plan) -> dict[float, str]:
    return {s: f"sdedit {ei.describe(sdedit_config(plan, s))}" for s in plan.strengths}


def ip2p_job(ip2p, clip, item: ei.Item, settings: dict[str, EditConfig]) -> ei.Job:
    def run(missing):
        out = {}
        for setting in missing:
            cfg = settings[setting]
            (result,), seconds = ei.timed(ip2p_edit, ip2p, [item.before], item.instruction, steps=cfg.steps,
                                          s_text=cfg.s_text, s_image=cfg.s_image, seed=cfg.seed)
            out[setting] = {**ei.edit_scores(clip, item, fit(result, item.before.width)), "seconds": seconds}
        return out

    return ei.Job(item.key, list(settings), run)


def sdedit_job(sd, clip, item: ei.Item, settings: dict[str, SDEditConfig]) -> ei.Job:
    def run(missing):
        out = {}
        for setting in missing:
            cfg = settings[setting]
            (result,), seconds = ei.timed(sdedit, sd, [item.before], item.after_caption, strength=cfg.strength,
                                          steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed)
            out[setting] = {**ei.edit_scores(clip, item, result), "seconds": seconds}
        return out

    return ei.Job(item.key, list(settings), run)


def measure(ip2p, sd, clip, plan: Plan, cache: ei.Cache, adopt=None,
            shard: tuple[int, int] | None = None) -> list[ei.Item]:
    """Fill the cache with every (setting, pair) of the plan, or of every N-th pair for ``shard`` (I, N);
    returns all the plan's pairs.

    ``adopt()`` copies finished DDIM-Edit/PTI results from eval_inversion.py's cache; it is called again
    before those jobs, as an eval_inversion.py running alongside may have finished them meanwhile.
    """
    items = ei.pair_items(plan.n, resolution(sd))
    mine = ei.shard_items(items, shard)
    ip2p_cfgs = {s: ip2p_config(plan, t, i) for (t, i), s in ip2p_settings(plan).items()}
    sdedit_cfgs = {s: sdedit_config(plan, k) for k, s in sdedit_settings(plan).items()}
    ei.run_jobs([ip2p_job(ip2p, clip, it, ip2p_cfgs) for it in mine], cache, "InstructPix2Pix")
    ei.run_jobs([sdedit_job(sd, clip, it, sdedit_cfgs) for it in mine], cache, "SDEdit")
    if adopt is not None and (reused := adopt()):
        print(f"reusing {reused} more DDIM-Edit/PTI results from eval_inversion.py")
    ei.run_jobs(ei.inversion_edit_jobs(sd, clip, mine, plan.inversion_plan()), cache, "DDIM-Edit and PTI")
    return items


# ----------------------------------------------------------------------------------------------
# Report


def curves(plan: Plan) -> list[tuple[str, list[tuple[str, str]]]]:
    """(curve name, [(point label, setting)]) for every curve of the plots and tables."""
    ip2p = ip2p_settings(plan)
    out = [(f"InstructPix2Pix, s_T = {t:g}", [(f"s_I = {i:g}", ip2p[(t, i)]) for i in plan.s_images])
           for t in plan.s_texts]
    out.append(("SDEdit", [(f"strength = {k:g}", s) for k, s in sdedit_settings(plan).items()]))
    inv = ei.editing_settings(plan.inversion_plan())
    out.append(("PTI", [(label.removeprefix("PTI "), s) for label, s in inv.items() if label.startswith("PTI")]))
    out.append(("DDIM-Edit", [("", inv["DDIM-Edit"])]))
    return out


def plot(cache: ei.Cache, plan: Plan, keys: Sequence[str], identity: dict, path: Path) -> Path:
    plt, fig, (ax1, ax2) = ei.new_figure(2)
    x = "clip_directional_similarity"
    for name, points in curves(plan):
        settings = [s for _, s in points]
        style = "s" if len(points) == 1 else "-o"
        for ax, y in ((ax1, "clip_image_similarity"), (ax2, "psnr")):
            ax.plot(*ei.curve(cache, settings, keys, x, y), style, label=name, ms=4)
    ax1.plot([identity[x]], [identity["clip_image_similarity"]], "x", color="gray", label="input unchanged")
    ax2.axhline(identity["psnr"], color="gray", ls=":", lw=1, label="input unchanged")
    ax1.set_ylabel("CLIP image similarity (fidelity to the input) →")
    ax2.set_ylabel("PSNR to the true after-image (dB) →")
    for ax in (ax1, ax2):
        ax.set_xlabel("CLIP directional similarity (agreement with the edit) →")
        ax.legend(fontsize=7)
    return ei.save_figure(plt, fig, path)


def best_point(cache: ei.Cache, points: list[tuple[str, str]], keys: Sequence[str]) -> tuple[str, str] | None:
    scored = [(cache.mean(s, keys, "psnr"), label, s) for label, s in points]
    scored = [t for t in scored if t[0] is not None]
    return max(scored)[1:] if scored else None


def write_report(out: Path, names: dict[str, str], plan: Plan, cache: ei.Cache, items: Sequence[ei.Item],
                 clip, command: str) -> Path:
    keys = [it.key for it in items]
    identity = ei.identity_scores(clip, items)
    plot(cache, plan, keys, identity, out / "editing" / "tradeoff.png")
    sections = []
    best_rows = []
    for name, points in curves(plan):
        rows = [[label or name, *ei.edit_row(cache, s, keys)] for label, s in points]
        sections.append(f"### {name}\n\n" + ei.md_table(["setting", *ei.EDIT_HEADER, "s / edit"], rows))
        best = best_point(cache, points, keys)
        if best is not None:
            best_rows.append([name, best[0] or "–", *ei.edit_row(cache, best[1], keys)])
    best_rows.append(["input unchanged", "–", *[ei.fmt(identity[c], 3 if "clip" in c else 2) for c in ei.EDIT_COLUMNS[:-1]],
                      f"{100 * identity['edit_success']:.0f}%", "0"])
    inv_plan = plan.inversion_plan()
    steps = {"InstructPix2Pix": ip2p_config(plan, 7.5, 1.5).steps, "SDEdit": sdedit_config(plan, 0.5).steps,
             "DDIM-Edit/PTI": ei.config("pti", inv_plan).steps}
    text = "\n\n".join([
        "# Text-driven editing: InstructPix2Pix, SDEdit, DDIM-Edit, Prompt Tuning Inversion",
        f"Measured by `scripts/eval_editing.py` on {len(items)} held-out world edit pairs "
        "(`training.evaluate.heldout_pairs`, without the pairs whose after-image equals the before-image). "
        f"Models: InstructPix2Pix {models.describe(names['ip2p'], 'ip2p')}, text-to-image "
        f"{models.describe(names['sd'], 'sd')}, CLIP metrics `{names['clip']}`. "
        "InstructPix2Pix gets the pair's written instruction; SDEdit the after caption; DDIM-Edit and PTI invert "
        "the before-image with the before caption and sample towards the after caption. Steps: "
        + ", ".join(f"{k} {v}" for k, v in steps.items()) + f"; seed {SEED}. Each curve trades fidelity "
        "to the input (CLIP image similarity) against agreement with the edit (CLIP directional similarity), as "
        "InstructPix2Pix Fig. 8 does; the world also knows the true after-image, so PSNR to it and the edit success "
        "rate (output nearer the true after-image than the input is, in pixel MSE) say which points are right.",
        f"Command:\n\n```bash\n{command}\n```\n\nRaw numbers, one entry per (setting, pair): "
        "[`editing/results.json`](editing/results.json); a rerun skips every entry already there.",
        "![trade-off curves](editing/tradeoff.png)",
        "## Best point of each method (highest PSNR to the true after-image)\n\n"
        + ei.md_table(["method", "setting", *ei.EDIT_HEADER, "s / edit"], best_rows),
        "## Every point\n\nMeans over the pairs; seconds per edit are wall time on this CPU "
        "(DDIM-Edit and PTI: inversion + sampling; one PTI inversion serves every η).",
        *sections,
    ]) + "\n"
    path = out / "editing.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


# ----------------------------------------------------------------------------------------------
# Command line


def make_plan(args) -> Plan:
    plan = QUICK if args.quick else FULL
    if args.n is not None and args.n < 2:
        raise SystemExit("--n must be at least 2")
    return replace(plan, n=args.n or plan.n, steps=args.steps)


def main(argv: Sequence[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = ei.parser(__doc__.split("\n\n")[0], steps_help="sampling steps of every method (default: each method's own, "
                                                       "IP2P 20, SDEdit/DDIM-Edit/PTI 50)")
    p.add_argument("--ip2p", default="bundled", help="InstructPix2Pix model: 'bundled' or a folder / hub id")
    p.set_defaults(model="bundled")
    p.add_argument("--sd", dest="model", help="text-to-image model for SDEdit, DDIM-Edit and PTI (same as --model)")
    args = p.parse_args(argv)
    plan = make_plan(args)
    shard = ei.shard_arg(args, "eval_editing.py")
    ip2p = models.load_ip2p(args.ip2p, device=args.device)
    sd = models.load_sd(args.model, device=args.device)
    clip_model, processor = models.load_clip(args.clip, device=args.device)
    clip = metrics.ClipFeatures(clip_model, processor)
    out = Path(args.out)
    sd_id = ei.models_id(sd.unet, sd.vae, sd.text_encoder, clip_model)
    cache, shard_files = ei.open_cache(out / "editing", f"{sd_id}+{ei.models_id(ip2p.unet, ip2p.vae, ip2p.text_encoder)}",
                                       shard)
    inversion_settings = list(ei.editing_settings(plan.inversion_plan()).values())

    def adopt() -> int:
        return cache.adopt(out / "inversion" / "results.json", sd_id, inversion_settings)

    if reused := adopt():
        print(f"reusing {reused} DDIM-Edit/PTI results from {out / 'inversion' / 'results.json'}")
    items = measure(ip2p, sd, clip, plan, cache, adopt, shard)
    if shard is not None:
        return ei.finish_shard(args, cache)
    path = write_report(out, {"ip2p": args.ip2p, "sd": args.model, "clip": args.clip}, plan, cache, items, clip,
                        ei.command_line("eval_editing.py", argv))
    for f in shard_files:
        f.unlink()  # taken over into results.json
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
