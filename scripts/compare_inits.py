"""Caption vs search init of VISII on a fresh set of held-out directions: a confirmation run.

docs/visii.md §6 compares the inits on the directions of seed 0, the set the default was chosen on.
This script repeats the comparison on the directions of another seed (same sizes, same units and
seeds as ``eval_visii.py --seed S`` would use), and writes each test image's outcome plus the paired
McNemar test to a JSON file. It reuses eval_visii.py's directions, configs and seeds.

    OMP_NUM_THREADS=1 python scripts/compare_inits.py --seed 1 --shard 0/2 --out A.json   # and 1/2 → B.json
    python scripts/compare_inits.py --merge A.json B.json --out docs/visii/inits_seed1.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pairedit.bench.suite import shard_of

sys.path.insert(0, str(Path(__file__).parent))
import eval_visii as ev  # noqa: E402  (the sibling script: directions, units, configs, seeds)

INITS = ("caption", "search")  # keys of eval_visii.EDIT_UNITS


def run(seed: int, shard: tuple[int, int], eval_args: list[str]) -> list[dict]:
    from pairedit import metrics
    from pairedit.images import fit

    args = ev.parse_args(["--tests", "8", *eval_args, "--seed", str(seed)])
    sizes = ev.sizes_of(args)
    ctx = ev.Context(args, sizes)
    rows = []
    for d in ev.edit_directions(sizes)[shard[0]::shard[1]]:
        for init in INITS:
            t0 = time.perf_counter()
            inst = ctx.learn(ev.Unit(*ev.EDIT_UNITS[init], d, ev.DEFAULT_LOSS))
            success = []
            for t in range(len(d.tests)):
                out = ctx.visii(inst, d, t, "fixed")
                before, after = (fit(im, out.width) for im in d.tests[t].images())
                success.append(metrics.edit_success(before, out, after))
            rows.append({"direction": d.key, "edit": d.edit.name, "category": d.edit.category, "init": init,
                         "init_text": inst.init_text, "success": success,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    from pairedit import metrics

    per = {init: {(r["direction"], t): s for r in rows if r["init"] == init for t, s in enumerate(r["success"])}
           for init in INITS}
    keys = sorted(set(per["caption"]) & set(per["search"]))
    only_search, only_caption, p = metrics.mcnemar([per["search"][k] for k in keys], [per["caption"][k] for k in keys])
    return {"n": len(keys), **{f"success_{i}": sum(per[i][k] for k in keys) / max(1, len(keys)) for i in INITS},
            "only_search": only_search, "only_caption": only_caption, "p": p}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Other options (--model, --steps, --tests, ...) go to eval_visii.py's parser.")
    p.add_argument("--seed", type=int, default=1, help="seed of the directions (default: %(default)s)")
    p.add_argument("--shard", default="0/1", metavar="I/N", help="directions I, I+N, ... (default: all)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge shard files instead of computing")
    p.add_argument("--out", required=True, help="JSON file to write")
    args, eval_args = p.parse_known_args(argv)
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        rows, seed = [r for part in parts for r in part["rows"]], parts[0]["seed"]
    else:
        rows, seed = run(args.seed, shard_of(args.shard), eval_args), args.seed
    result = {"seed": seed, "summary": summary(rows), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
