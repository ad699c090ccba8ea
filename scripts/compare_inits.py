"""Two VISII variants (init, learning length) on a fresh set of held-out directions: a confirmation run.

docs/visii.md §6 compares the inits on the directions of seed 0, the set the default was chosen on.
This script repeats a comparison of two named ``VARIANTS`` on the directions of another seed (same
sizes, units and seeds as ``eval_visii.py --seed S`` would use), and writes each test image's outcome
plus the paired McNemar test to a JSON file. It reuses eval_visii.py's directions, configs and seeds.

    OMP_NUM_THREADS=1 python scripts/compare_inits.py --seed 1 --shard 0/2 --out A.json   # and 1/2 → B.json
    python scripts/compare_inits.py --merge A.json B.json --out docs/visii/inits_seed1.json
    # another pair of variants, reusing the rows of a variant already measured on these directions
    OMP_NUM_THREADS=1 python scripts/compare_inits.py --seed 1 --variants search search-3x-steps \\
        --reuse docs/visii/inits_seed1.json --shard 0/2 --out C.json                     # and 1/2 → D.json
    python scripts/compare_inits.py --merge docs/visii/inits_seed1.json C.json D.json \\
        --variants search search-3x-steps --out docs/visii/steps_seed1.json
    # a variant against what the model does with the true words (docs/visii/words_seed1.json)
    OMP_NUM_THREADS=1 python scripts/compare_inits.py --seed 1 --variants ip2p-words bank \\
        --reuse docs/visii/bank_seed1.json --out docs/visii/words_seed1.json
    # the bank of every wording of the world (world.all_instructions) against IP2P given the true words, and against
    # the training bank (the rows of the "bank" variant computed when the bundled bank held those: session 36)
    OMP_NUM_THREADS=1 python scripts/compare_inits.py --seed 1 --variants bank-language ip2p-words \
        --reuse docs/visii/words_bank_seed1.json --out H.json
    python scripts/compare_inits.py --merge docs/visii/words_bank_seed1.json H.json --variants bank bank-language \
        --out docs/visii/language_vs_training_bank_seed1.json
    # the bank init against the same with its words swapped (the bank row learns from the swap run's bank pick)
    OMP_NUM_THREADS=1 python scripts/compare_inits.py --seed 1 --variants bank bank-swap --shard 0/2 --out E.json
    # the bank init against the same with its pick and the pick's one-word swaps ranked by their finished edits
    OMP_NUM_THREADS=1 python scripts/compare_inits.py --seed 2 --variants bank bank-outcome \
        --reuse docs/visii/words_bank_seed2.json --shard 0/2 --out F.json                 # and 1/2 → G.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pairedit.bench.suite import shard_of
from pairedit.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
import eval_visii as ev  # noqa: E402  (the sibling script: directions, units, configs, seeds)

# name: (key of eval_visii.EDIT_UNITS, how it differs from eval_visii's VisiiConfig of that unit)
VARIANTS = {
    "caption": ("caption", {}),
    "search": ("search", {}),
    "search-3x-steps": ("search", {"steps_times": 3}),  # 3× the learning steps (3,000 for the paper's N = 1000)
    "bank": ("search", {"init": "bank"}),  # the best of the bundled model's training instructions (init="bank")
    # the same with a bank of every wording of the world (world.all_instructions), held-out combinations included
    "bank-language": ("search", {"init": "bank", "bank": "language"}),
    # the same applied with random noise (§5 "Noises": the paper's other option), learnt for 250 steps, or both: the
    # session-36 lead on seeds 1-2 (docs/visii/session36/noise_steps.py), rechecked on fresh seeds in session 37
    "bank-language-random": ("search", {"init": "bank", "bank": "language", "noise": "random"}),
    "bank-language-250": ("search", {"init": "bank", "bank": "language", "steps": 250}),
    "bank-language-250-random": ("search", {"init": "bank", "bank": "language", "steps": 250, "noise": "random"}),
    "bank-swap": ("search", {"init": "bank", "bank_swap_words": True}),  # then its words swapped (swap_words)
    # then the pick and its one-word swaps ranked by their finished edits of the example (outcome_instruction)
    "bank-outcome": ("search", {"init": "bank", "bank_outcome_seeds": 2}),
    # no learning: InstructPix2Pix given the true instruction (first wording) on the same test images and seeds,
    # docs/visii.md §1's reference column; what a learned instruction is measured against
    "ip2p-words": (None, {}),
}


def overrides(config, change: dict) -> dict:
    """VisiiConfig fields for a variant's change (``steps_times``: a multiple of the learning steps; ``bank``: which
    instruction bank, see ``bank_of``; ``noise``: how to apply, see ``noise_of``; other keys are fields)."""
    from pairedit.visii import default_steps

    fields = {k: v for k, v in change.items() if k not in ("steps_times", "bank", "noise")}
    if "steps_times" not in change:
        return fields
    steps = default_steps(from_bank=change.get("init") == "bank") if config.steps is None else config.steps
    return {**fields, "steps": steps * change["steps_times"]}


def bank_of(change: dict) -> list[str] | None:
    """The instruction bank a variant learns with: None for the model's own (instructions.txt)."""
    from pairedit import world

    return world.all_instructions() if change.get("bank") == "language" else None


def noise_of(change: dict) -> str:
    """The noise a variant applies its instruction with: the recorded one ("fixed", the default) or "random"."""
    return change.get("noise", "fixed")


def bank_key(change: dict) -> str | None:
    """Variants that rank the same bank the same way share its pick (None: the variant ranks no bank)."""
    return str(change.get("bank")) if change.get("init") == "bank" else None


def plain_bank(change: dict) -> bool:
    """A bank variant that learns from the bank's pick as it is (no swaps, no outcome ranking): it can start from
    another variant's pick of the same bank (init_text = the pick; the same learning seed, so the same
    instruction as ranking the bank again) instead of ranking the bank a second time."""
    return bank_key(change) is not None and not change.get("bank_swap_words") and not change.get("bank_outcome_seeds")


def directions(seed: int, eval_args: list[str]) -> list:
    """eval_visii.py's §1 directions for ``--seed seed`` and the other options (8 test images by default)."""
    return ev.edit_directions(ev.sizes_of(ev.parse_args(["--tests", "8", *eval_args, "--seed", str(seed)])))


def run(seed: int, shard: tuple[int, int], eval_args: list[str], variants: tuple[str, ...] = ("caption", "search"),
        done: set[tuple[str, str]] = frozenset()) -> list[dict]:
    """Rows (one per direction and variant) of the shard's directions, except the (direction, variant) in ``done``."""
    from pairedit import metrics
    from pairedit.images import fit

    args = ev.parse_args(["--tests", "8", *eval_args, "--seed", str(seed)])
    ctx = ev.Context(args, ev.sizes_of(args))
    rows = []
    # variants that swap or rerank the bank's pick first: their pick (init_trace[0]) is also the plain variants'
    order = sorted(variants, key=lambda v: plain_bank(VARIANTS[v][1]))
    for d in directions(seed, eval_args)[shard[0]::shard[1]]:
        picks = {}  # bank_key: the bank's pick on this direction
        learned = {}  # variants that differ only in how they apply share the learned instruction
        for name in order:
            if (d.key, name) in done:
                continue
            t0 = time.perf_counter()
            init, change = VARIANTS[name]
            if init is None:  # InstructPix2Pix with the true words
                inst, text = None, d.instruction
            else:
                unit = ev.Unit(*ev.EDIT_UNITS[init], d, ev.DEFAULT_LOSS)
                pick = picks.get(bank_key(change)) if plain_bank(change) else None
                fields = overrides(ctx.config(unit), change)
                same = json.dumps([init, bank_key(change), fields], sort_keys=True)
                inst = learned.get((same, pick)) if plain_bank(change) else None
                if inst is None:
                    inst = ctx.learn(unit, init_text=pick, bank=bank_of(change), **fields)
                text = inst.init_text
                if bank_key(change) is not None:  # the bank's pick (the init text when it was given)
                    picks.setdefault(bank_key(change), (inst.init_trace or [text])[0])
                if plain_bank(change):
                    learned[same, text] = inst
            success = []
            for t in range(len(d.tests)):
                out = ctx.ip2p(d, t, text) if inst is None else ctx.visii(inst, d, t, noise_of(change))
                before, after = (fit(im, out.width) for im in d.tests[t].images())
                success.append(metrics.edit_success(before, out, after))
            rows.append({"direction": d.key, "edit": d.edit.name, "category": d.edit.category, "init": name,
                         "init_text": text, "init_trace": inst.init_trace if inst else [], "success": success,
                         "seconds": round(time.perf_counter() - t0, 1), **truth_fields(d.edit, text)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict], variants: tuple[str, str] = ("caption", "search")) -> dict:
    """Paired edit success of the two variants over the test images both were measured on."""
    from pairedit import metrics

    a, b = variants
    per = {v: {(r["direction"], t): s for r in rows if r["init"] == v for t, s in enumerate(r["success"])}
           for v in variants}
    keys = sorted(set(per[a]) & set(per[b]))
    only_b, only_a, p = metrics.mcnemar([per[b][k] for k in keys], [per[a][k] for k in keys])
    return {"n": len(keys), **{f"success_{v}": sum(per[v][k] for k in keys) / max(1, len(keys)) for v in variants},
            f"only_{b}": only_b, f"only_{a}": only_a, "p": p}


def truth_fields(edit, init_text: str) -> dict:
    """``heldout_combo``: the edit's (edit, shape) combination is held out, so no model or instruction bank saw
    its wording; ``init_is_a_true_wording``: the init text is one of the edit's own wordings."""
    from pairedit import world

    wordings = {edit.instruction(wording=k) for k in range(len(world.EDIT_TYPES[edit.type].wordings))}
    return {"heldout_combo": world.is_heldout_combo(edit), "init_is_a_true_wording": init_text in wordings}


def annotate(rows: list[dict], seed: int, eval_args: list[str]) -> list[dict]:
    """``truth_fields`` for rows of earlier outputs that lack them (their directions from the same options)."""
    if all("heldout_combo" in r for r in rows):
        return rows
    edits = {d.key: d.edit for d in directions(seed, eval_args)}
    if any(r["direction"] not in edits for r in rows):
        raise SystemExit("compare_inits.py: some rows are of other directions; pass the eval_visii.py options "
                         "(--tests, --categories, ...) the rows were computed with")
    return [r if "heldout_combo" in r else {**r, **truth_fields(edits[r["direction"]], r["init_text"])} for r in rows]


def read_rows(paths: list[str]) -> tuple[list[dict], int]:
    """The rows of earlier outputs (later files win for the same direction and variant), and their seed."""
    try:
        parts = [json.loads(Path(f).read_text()) for f in paths]
    except (OSError, ValueError) as err:
        raise SystemExit(f"compare_inits.py: cannot read {getattr(err, 'filename', None) or ', '.join(paths)}: "
                         f"{type(err).__name__}") from err
    if len({part["seed"] for part in parts}) > 1:
        raise SystemExit(f"compare_inits.py: {', '.join(paths)} were made on directions of different seeds")
    rows = {(r["direction"], r["init"]): r for part in parts for r in part["rows"]}
    return list(rows.values()), parts[0]["seed"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Other options (--model, --steps, --tests, ...) go to eval_visii.py's parser.")
    p.add_argument("--seed", type=int, default=1, help="seed of the directions (default: %(default)s)")
    p.add_argument("--shard", default="0/1", metavar="I/N", help="directions I, I+N, ... (default: all)")
    p.add_argument("--variants", nargs="+", default=["caption", "search"], choices=sorted(VARIANTS), metavar="NAME",
                   help=f"two or more variants to compare, of {', '.join(VARIANTS)} (default: caption search); the "
                        "first two are the summary, each other is also compared with the first; ip2p-words is "
                        "InstructPix2Pix given the true instruction, with no learning")
    p.add_argument("--reuse", nargs="+", default=[], metavar="JSON",
                   help="earlier outputs on the same seed: their rows are kept and not computed again")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge earlier outputs (e.g. shards) instead of computing")
    p.add_argument("--out", required=True, help="JSON file to write")
    args, eval_args = p.parse_known_args(argv)
    variants = tuple(dict.fromkeys(args.variants))
    if len(variants) < 2:
        p.error("--variants needs two different names")
    if args.merge:
        rows, seed = read_rows(args.merge)
    else:
        reused, seed = read_rows(args.reuse) if args.reuse else ([], args.seed)
        if seed != args.seed:
            raise SystemExit(f"compare_inits.py: --reuse files are on seed {seed}, not --seed {args.seed}")
        try:
            shard = shard_of(args.shard)
        except UserError as err:
            raise SystemExit(f"compare_inits.py: {err}") from None
        mine = {d.key for d in directions(seed, eval_args)[shard[0]::shard[1]]}
        reused = [r for r in reused if r["init"] in variants and r["direction"] in mine]
        done = {(r["direction"], r["init"]) for r in reused}
        rows = reused + run(seed, shard, eval_args, variants, done)
    rows = annotate([r for r in rows if r["init"] in variants], seed, eval_args)
    true_inits = {v: sum(r["init_is_a_true_wording"] for r in rows if r["init"] == v) for v in variants}
    result = {"seed": seed, "variants": list(variants), "configs": {v: VARIANTS[v][1] for v in variants},
              "summary": summary(rows, variants[:2]),
              "summary_heldout_combos": summary([r for r in rows if r["heldout_combo"]], variants[:2]),
              "summaries": {f"{v} vs {variants[0]}": summary(rows, (variants[0], v)) for v in variants[1:]},
              "init_is_a_true_wording": true_inits, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
