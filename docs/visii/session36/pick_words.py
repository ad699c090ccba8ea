# ruff: noqa: E402  (one-off diagnostic of session 36)
"""InstructPix2Pix given the bank pick's words, no learning, on each direction's 8 tests, next to VISII learned
from that pick (the rows of a compare_inits JSON): is the gap to the true words the pick or the learning?"""
import json
import sys

sys.path.insert(0, "/work/main/scripts")
import torch

torch.set_num_threads(1)
import compare_inits as ci
import eval_visii as ev

from pairedit import metrics
from pairedit.images import fit

seed, variant, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rows, _ = ci.read_rows([path])
args = ev.parse_args(["--tests", "8", "--seed", str(seed)])
ctx = ev.Context(args, ev.sizes_of(args))
dirs = {d.key: d for d in ci.directions(seed, [])}
out = []
for r in rows:
    if r["init"] != variant:
        continue
    d = dirs[r["direction"]]
    s = []
    for t in range(len(d.tests)):
        o = ctx.ip2p(d, t, r["init_text"])
        bt, at = (fit(im, o.width) for im in d.tests[t].images())
        s.append(metrics.edit_success(bt, o, at))
    w = next(x for x in rows if x["direction"] == r["direction"] and x["init"] == "ip2p-words")
    print(r["edit"], repr(r["init_text"]), "pick words", sum(s), "learned", sum(r["success"]), "true", sum(w["success"]),
          flush=True)
    out.append({"direction": r["direction"], "edit": r["edit"], "pick": r["init_text"], "pick_words": s,
                "learned": r["success"], "true_words": w["success"]})
print("seed", seed, "pick words", sum(sum(x["pick_words"]) for x in out), "learned", sum(sum(x["learned"]) for x in out),
      "true", sum(sum(x["true_words"]) for x in out))
json.dump({"seed": seed, "variant": variant, "rows": out}, open(f"/work/runs/s36/pick_words_seed{seed}.json", "w"),
          indent=1)
