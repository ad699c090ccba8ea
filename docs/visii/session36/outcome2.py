# ruff: noqa: E402  (one-off diagnostic of session 36)
"""Experiment: which outcome score picks the right words? For each direction's bank pick (from a compare_inits
JSON), edit the example's before-image with the pick and each one-word swap (N seeds), score each output against
the example's after-image several ways, then a second round of swaps from the best of the 'balanced' score.
Measures InstructPix2Pix with each rule's chosen words on the direction's 8 tests (proxy for learning)."""
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

seed, nseeds, out_path, files = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows, _ = ci.read_rows(files)
args = ev.parse_args(["--tests", "8", "--seed", str(seed)])
ctx = ev.Context(args, ev.sizes_of(args))
bank = instruction_bank("bundled")
dirs = {d.key: d for d in ci.directions(seed, [])}
res = visii.model_resolution(ctx.pipe)


def scores(b, a, text):
    pb, pa = metrics._pixels(b), metrics._pixels(a)
    mask = (pb - pa).abs().sum(0) > 0
    r = {"all": 0.0, "changed": 0.0, "kept": 0.0, "cos": 0.0}
    for s in range(nseeds):
        o = ip2p_edit(ctx.pipe, [b], text, steps=20, seed=1000 + s)[0]
        po = metrics._pixels(o)
        e = (po - pa) ** 2
        r["all"] += float(e.mean()) / nseeds
        r["changed"] += float(e[:, mask].mean()) / nseeds if mask.any() else 0.0
        r["kept"] += float(e[:, ~mask].mean()) / nseeds if (~mask).any() else 0.0
        d1, d2 = (po - pb).flatten(), (pa - pb).flatten()
        r["cos"] += float(d1 @ d2 / (d1.norm() * d2.norm() + 1e-9)) / nseeds
    r["balanced"] = (r["changed"] + r["kept"]) / 2 if (~mask).any() else r["changed"]
    return r


RULES = {"all": lambda r: r["all"], "changed": lambda r: r["changed"], "balanced": lambda r: r["balanced"],
         "negcos": lambda r: -r["cos"]}
test_cache = {}


def tests(d, text):
    if (d.key, text) not in test_cache:
        s = []
        for t in range(len(d.tests)):
            o = ctx.ip2p(d, t, text)
            bt, at = (fit(im, o.width) for im in d.tests[t].images())
            s.append(metrics.edit_success(bt, o, at))
        test_cache[d.key, text] = s
    return test_cache[d.key, text]


out = []
for r in rows:
    if r["init"] != "bank":
        continue
    d = dirs[r["direction"]]
    b, a = (fit(im, res) for im in d.examples[0].images())
    pick = r["init_text"]
    sc = {}
    for c in [pick] + visii.one_word_swaps(pick, bank):
        sc.setdefault(c, scores(b, a, c))
    chosen = {k: min(sc, key=lambda c: f(sc[c])) for k, f in RULES.items()}
    # round 2 from the balanced pick
    r1 = chosen["balanced"]
    for c in visii.one_word_swaps(r1, bank):
        sc.setdefault(c, scores(b, a, c))
    chosen["balanced2"] = min(sc, key=lambda c: RULES["balanced"](sc[c]))
    chosen["changed2"] = min(sc, key=lambda c: RULES["changed"](sc[c]))
    res_ = {k: sum(tests(d, c)) for k, c in chosen.items()}
    w = next(x for x in rows if x["direction"] == r["direction"] and x["init"] == "ip2p-words")
    print(r["edit"], "| pick", repr(pick), sum(r["success"]), "| true", sum(w["success"]), "|",
          {k: (chosen[k], res_[k]) for k in chosen}, flush=True)
    out.append({"direction": r["direction"], "edit": r["edit"], "pick": pick, "learned_from_pick": r["success"],
                "true": w["success"], "chosen": chosen, "chosen_success": {k: tests(d, c) for k, c in chosen.items()},
                "scores": sc})
    json.dump({"seed": seed, "nseeds": nseeds, "rows": out}, open(out_path, "w"), indent=1)
