# ruff: noqa: E402  (one-off diagnostic of session 36)
"""Learning from the language-bank pick loses images against the pick's own words (seed 1: 91 vs 96, seed 2: 82
vs 87). Is it the fixed noise or the learning length? Relearn from each direction's pick (init_text = the pick:
the same instruction as the bank run) with 1000 and 250 steps; apply each with fixed and random noise."""
import json
import sys

sys.path.insert(0, "/work/main/scripts")
import torch

torch.set_num_threads(1)
import compare_inits as ci
import eval_visii as ev

from pairedit import metrics
from pairedit.images import fit

seed, path = int(sys.argv[1]), sys.argv[2]
rows, _ = ci.read_rows([path])
args = ev.parse_args(["--tests", "8", "--seed", str(seed)])
ctx = ev.Context(args, ev.sizes_of(args))
dirs = {d.key: d for d in ci.directions(seed, [])}
out = []
for r in rows:
    if r["init"] != "bank-language":
        continue
    d = dirs[r["direction"]]
    unit = ev.Unit(*ev.EDIT_UNITS["search"], d, ev.DEFAULT_LOSS)
    res = {}
    for steps in (1000, 250):
        inst = ctx.learn(unit, init_text=r["init_text"], init="bank", steps=steps)
        for noise in ("fixed", "random"):
            s = []
            for t in range(len(d.tests)):
                o = ctx.visii(inst, d, t, noise)
                bt, at = (fit(im, o.width) for im in d.tests[t].images())
                s.append(metrics.edit_success(bt, o, at))
            res[f"{steps}-{noise}"] = s
    print(r["edit"], repr(r["init_text"]), "run", sum(r["success"]), {k: sum(v) for k, v in res.items()}, flush=True)
    out.append({"direction": r["direction"], "edit": r["edit"], "pick": r["init_text"], "run_fixed": r["success"],
                **res})
    json.dump({"seed": seed, "rows": out}, open(f"/work/runs/s36/noise_steps_seed{seed}.json", "w"), indent=1)
print("seed", seed, "run", sum(sum(x["run_fixed"]) for x in out),
      {k: sum(sum(x[k]) for x in out) for k in ("1000-fixed", "1000-random", "250-fixed", "250-random")})
