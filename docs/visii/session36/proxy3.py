# ruff: noqa: E402  (one-off diagnostic of session 36)
"""Experiment: a bank of every instruction the world's language says (held-out combinations included), the MSE
pick from it, then outcome coordinate descent over the pick's one-word swaps that are in that bank (2 seeds;
rules 'all' = pixel MSE, 'balanced' = mean of changed-region and kept-region MSE). IP2P with each text on the
direction's 8 tests (proxy for learning from it)."""
import json
import sys

sys.path.insert(0, "/work/main/scripts")
import torch

torch.set_num_threads(1)
import compare_inits as ci
import eval_visii as ev

from pairedit import metrics, visii, world
from pairedit.editing import ip2p_edit
from pairedit.images import fit

seed, nseeds, out_path, files = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows, _ = ci.read_rows(files)
args = ev.parse_args(["--tests", "8", "--seed", str(seed)])
ctx = ev.Context(args, ev.sizes_of(args))
bank = world.all_instructions()  # the session ran it from a file of the same 788 lines
inbank = set(bank)
dirs = {d.key: d for d in ci.directions(seed, [])}
res = visii.model_resolution(ctx.pipe)
config = visii.VisiiConfig()


def scores(b, a, text):
    pb, pa = metrics._pixels(b), metrics._pixels(a)
    mask = (pb - pa).abs().sum(0) > 0
    r = {"all": 0.0, "changed": 0.0, "kept": 0.0}
    for s in range(nseeds):
        po = metrics._pixels(ip2p_edit(ctx.pipe, [b], text, steps=20, seed=s)[0])
        e = (po - pa) ** 2
        r["all"] += float(e.mean()) / nseeds
        r["changed"] += float(e[:, mask].mean()) / nseeds if mask.any() else 0.0
        r["kept"] += float(e[:, ~mask].mean()) / nseeds if (~mask).any() else 0.0
    r["balanced"] = (r["changed"] + r["kept"]) / 2 if (~mask).any() and mask.any() else r["all"]
    return r


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
    z_x, z_y = visii.encode_pairs(ctx.pipe, [b], [a])
    g = torch.Generator().manual_seed(config.seed + 1)
    screen = visii.instruction_mse(ctx.pipe, z_x, z_y, bank, config.bank_screen_samples, g)
    keep = [bank[int(i)] for i in screen.argsort()[:config.bank_keep]]
    final = visii.instruction_mse(ctx.pipe, z_x, z_y, keep, config.bank_rank_samples, g)
    ranked = [keep[int(i)] for i in final.argsort()]
    pick = ranked[0]
    sc = {}
    chains = {}
    for rule in ("all", "balanced"):
        cur, chain = pick, [pick]
        for _ in range(3):
            cands = [cur] + [c for c in visii.one_word_swaps(cur, bank) if c in inbank]
            for c in cands:
                if c not in sc:
                    sc[c] = scores(b, a, c)
            best = min(cands, key=lambda c: sc[c][rule])
            if best == cur:
                break
            cur = best
            chain.append(cur)
        chains[rule] = chain
    # outcome over the MSE rank's top 4 plus the pick's swaps
    top = ranked[:4]
    for c in top:
        if c not in sc:
            sc[c] = scores(b, a, c)
    texts = {"train_pick": r["init_text"], "pick": pick, **{f"{k}_1": v[min(1, len(v) - 1)] for k, v in chains.items()},
             **{f"{k}_end": v[-1] for k, v in chains.items()}}
    succ = {k: tests(d, t) for k, t in texts.items()}
    w = next(x for x in rows if x["direction"] == r["direction"] and x["init"] == "ip2p-words")
    print(r["edit"], "| learned(train pick)", sum(r["success"]), "true", sum(w["success"]), "|",
          {k: (texts[k], sum(succ[k])) for k in texts}, flush=True)
    out.append({"direction": r["direction"], "edit": r["edit"], "learned_from_train_pick": r["success"],
                "true": w["success"], "ranked": ranked, "rank_scores": sorted(final.tolist()), "chains": chains,
                "texts": texts, "success": succ, "scores": sc})
    json.dump({"seed": seed, "nseeds": nseeds, "rows": out}, open(out_path, "w"), indent=1)
