# ruff: noqa: E402  (one-off diagnostic of session 35: imports after the sys.path entry for scripts/)
"""Diagnostic: InstructPix2Pix given the bank pick's words (no learning) on the same tests as compare_inits rows."""
import json
import sys

sys.path.insert(0, "/work/main/scripts")
import torch

torch.set_num_threads(1)
import compare_inits as ci
import eval_visii as ev

from pairedit import metrics
from pairedit.images import fit

seed, files = int(sys.argv[1]), sys.argv[2:]
rows, _ = ci.read_rows(files)
args = ev.parse_args(["--tests", "8", "--seed", str(seed)])
ctx = ev.Context(args, ev.sizes_of(args))
dirs = {d.key: d for d in ci.directions(seed, [])}
out = []
for r in rows:
    if r["init"] != "bank":
        continue
    d = dirs[r["direction"]]
    s = []
    for t in range(len(d.tests)):
        o = ctx.ip2p(d, t, r["init_text"])
        b, a = (fit(im, o.width) for im in d.tests[t].images())
        s.append(metrics.edit_success(b, o, a))
    w = next(x for x in rows if x["direction"] == r["direction"] and x["init"] == "ip2p-words")
    print(r["edit"], repr(r["init_text"]), "learned", sum(r["success"]), "pick-words", sum(s),
          "true-words", sum(w["success"]), "heldout", r["heldout_combo"], flush=True)
    out.append({**r, "init": "bank-words", "success": s})
json.dump({"seed": seed, "rows": out}, open(f"/work/runs/s35/exp/bank_words_seed{seed}.json", "w"))
