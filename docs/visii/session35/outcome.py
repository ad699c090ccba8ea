# ruff: noqa: E402  (one-off diagnostic of session 35: imports after the sys.path entry for scripts/)
"""Experiment: re-rank the bank pick and its one-word swaps by outcome: how close InstructPix2Pix's edit of
the example's before-image with the candidate comes to the example's after-image (pixel MSE, N seeds).
Then measure IP2P with the chosen words on the direction's 8 tests (learning ~ pick words on seed 1: 85 vs 85)."""
import json
import sys

sys.path.insert(0, "/work/main/scripts")
import torch

torch.set_num_threads(1)
import compare_inits as ci
import eval_visii as ev

from pairedit import metrics, visii
from pairedit.editing import ip2p_edit
from pairedit.images import fit
from pairedit.models import instruction_bank

seed, nseeds, files = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
rows, _ = ci.read_rows(files)
args = ev.parse_args(["--tests", "8", "--seed", str(seed)])
ctx = ev.Context(args, ev.sizes_of(args))
bank = instruction_bank("bundled")
dirs = {d.key: d for d in ci.directions(seed, [])}
res = visii.model_resolution(ctx.pipe)
out = []
for r in rows:
    if r["init"] != "bank":
        continue
    d = dirs[r["direction"]]
    b, a = (fit(im, res) for im in d.examples[0].images())
    pick = r["init_text"]
    cands = [pick] + visii.one_word_swaps(pick, bank)  # the same list, in the same order, as the run's inline swaps
    score = []
    for c in cands:
        outs = [ip2p_edit(ctx.pipe, [b], c, steps=20, seed=1000 + s)[0] for s in range(nseeds)]
        score.append(sum(metrics.mse(o, a) for o in outs) / nseeds)
    order = sorted(range(len(cands)), key=lambda i: score[i])
    best = cands[order[0]]
    s = []
    for t in range(len(d.tests)):
        o = ctx.ip2p(d, t, best)
        bt, at = (fit(im, o.width) for im in d.tests[t].images())
        s.append(metrics.edit_success(bt, o, at))
    w = next(x for x in rows if x["direction"] == r["direction"] and x["init"] == "ip2p-words")
    print(r["edit"], repr(pick), "->", repr(best), "| top3", [cands[i] for i in order[:3]], "| ncand", len(cands),
          "| chosen", sum(s), "learned-from-pick", sum(r["success"]), "true", sum(w["success"]), flush=True)
    out.append({"direction": r["direction"], "edit": r["edit"], "pick": pick, "chosen": best, "success": s,
                "cands": cands, "score": score})
json.dump({"seed": seed, "rows": out}, open(f"/work/runs/s35/exp/outcome_seed{seed}_n{nseeds}.json", "w"))
