# ruff: noqa: E402  (one-off diagnostic of session 37)
"""Does VISII's MSE term (the bank init's ranking score) single out the true shape word better when it is taken
only where the example changes, or only on some timesteps? For each object edit of eval_visii's §1 directions of
a seed, the edit's first wording with its shape swapped for every shape (diagnose_visii.shape_candidates) is scored
on the example pair with K fixed (t, ε) draws; per draw the squared error map is kept, then scored as: the plain
mean (the bank init's score), the mean weighted by where the latent changes between before and after, and the
plain mean over each quarter of [0, T)."""
import json
import sys

sys.path.insert(0, "/work/main/scripts")
import torch

torch.set_num_threads(1)
import diagnose_visii as dv
import eval_visii as ev
from diffusers import DDPMScheduler

from pairedit.images import fit
from pairedit.sampling import encode_text
from pairedit.visii import encode_pairs, model_resolution, noisy_input, stratified_samples

seed, K, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
args = ev.parse_args(["--tests", "8", "--seed", str(seed)])
ctx = ev.Context(args, ev.sizes_of(args))
pipe = ctx.pipe
sched = DDPMScheduler.from_config(pipe.scheduler.config)
T = sched.config.num_train_timesteps
rows = []
for d in ev.edit_directions(ev.sizes_of(args)):
    if d.edit.target is None:
        continue
    before, after = (fit(im, model_resolution(pipe)) for im in d.examples[0].images())
    texts = dv.shape_candidates(d.edit)
    true = texts.index(d.edit.instruction(wording=0))
    z_x, z_y = encode_pairs(pipe, [before], [after])
    (t, eps), = stratified_samples(z_y, K, T, torch.Generator().manual_seed(seed))
    x_in = noisy_input(sched, z_x[0], z_y[0], t, eps, pipe.unet.dtype)
    change = (z_y[0] / pipe.vae.config.scaling_factor - z_x[0]).abs().mean(1)[0]  # (h, w)
    w = change / change.mean()
    maps = []
    with torch.no_grad():
        for text in texts:
            cond = encode_text(pipe, [text])
            err = []
            for i in range(0, K, 64):
                n = len(t[i:i + 64])
                e = pipe.unet(x_in[i:i + 64], t[i:i + 64], encoder_hidden_states=cond.expand(n, -1, -1)).sample
                err.append((e - eps[i:i + 64]).pow(2).mean(1))  # (k, h, w)
            maps.append(torch.cat(err))
    maps = torch.stack(maps)  # (texts, K, h, w)
    scores = {"mean": maps.mean((1, 2, 3)), "changed": (maps * w).mean((1, 2, 3)),
              "top_change": maps[..., w > w.flatten().quantile(0.75)].mean((1, 2))}
    for q in range(4):
        sel = (t >= q * T // 4) & (t < (q + 1) * T // 4)
        scores[f"t{q}"] = maps[:, sel].mean((1, 2, 3))
    rank = {k: dv.rank_of(v.tolist(), true) for k, v in scores.items()}
    best = {k: texts[int(v.argmin())] for k, v in scores.items()}
    rows.append({"edit": d.edit.name, "objects": [o.shape for o in d.examples[0].before.objects], "rank": rank,
                 "best": best, "n": len(texts)})
    print(d.edit.name, rows[-1]["objects"], rank, flush=True)
summary = {k: sum(r["rank"][k] == 1 for r in rows) for k in rows[0]["rank"]}
print("seed", seed, "first:", summary, "of", len(rows))
json.dump({"seed": seed, "K": K, "summary_first": summary, "rows": rows}, open(out_path, "w"), indent=1)
