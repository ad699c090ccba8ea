"""Can one example pair single out which object a VISII instruction names? Diagnostic behind docs/visii.md.

    OMP_NUM_THREADS=1 python scripts/diagnose_visii.py --seed 1 --out docs/visii/shape_words_seed1.json

VISII's bank init (``VisiiConfig.init = "bank"``) has no wording of a held-out (edit, shape) combination, so
for an object edit it starts from the same edit naming another shape ("shrink the star" for a shrunk
triangle), and 1,000 learning steps on one pair rarely move it to the right word. Is the right word
recoverable from the pair at all? For each object edit of ``eval_visii.py --seed S``'s §1 directions, the
edit's first wording with its shape word swapped for every shape of the world (the true one among them) is
scored on the direction's example pair three ways, and the true shape's rank among the candidates recorded:

- ``mse``: VISII's MSE term (Eq. 2), the score the bank init ranks by (``visii.instruction_mse``,
  ``bank_rank_samples`` fixed (t, ε) samples, or ``--samples``). Each candidate's per-sample differences to the
  true wording give a paired z (mean / standard error; negative: the candidate fits the pair better), so a
  wrong word that wins can be told apart from one that wins by the noise of the draws;
- ``clip``: VISII's CLIP term (Eq. 3), 1 − cos between the instruction and Δ of the pair (``visii.clip_loss``);
- ``edit``: InstructPix2Pix given the candidate edits the example's before-image (the gate's sampler, a few
  seeds); pixel MSE of the outputs to the example's after-image (``--edit-seeds 0`` skips it).

Rank 1 is the best score; ties are not broken in the true word's favour (rank = 1 + candidates scoring
strictly better). Chance: the mean of 1 / candidates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import eval_visii as ev  # noqa: E402  (the sibling script: directions and seeds)

from pairedit import world  # noqa: E402
from pairedit.visii import VisiiConfig  # noqa: E402


def shape_candidates(edit: world.Edit) -> list[str]:
    """The edit's first wording with its target shape swapped for each shape of the world (the true one included)
    that the edit can name (a replace cannot turn a shape into itself)."""
    out = []
    for shape in world.SHAPES:
        if edit.type == f"replace_{shape}":
            continue
        out.append(world.Edit(edit.type, target=shape, value=edit.value).instruction(wording=0))
    return out


def rank_of(scores: list[float], index: int) -> int:
    """1 + the number of candidates scoring strictly lower (better) than candidate ``index``."""
    return 1 + sum(s < scores[index] for s in scores)


def score_direction(pipe, clip, processor, d, edit_seeds: int, samples: int, seed: int) -> dict:
    from pairedit import metrics
    from pairedit.editing import ip2p_edit
    from pairedit.images import fit
    from pairedit.visii import clip_loss, edit_direction, encode_instruction, encode_pairs, instruction_mse, model_resolution

    before, after = (fit(im, model_resolution(pipe)) for im in d.examples[0].images())
    texts = shape_candidates(d.edit)
    true = texts.index(d.edit.instruction(wording=0))
    z_x, z_y = encode_pairs(pipe, [before], [after])
    per_sample = instruction_mse(pipe, z_x, z_y, texts, samples, torch.Generator().manual_seed(seed), per_sample=True)
    mse = per_sample.mean(1).tolist()
    delta = edit_direction(clip, processor, [before], [after])
    with torch.no_grad():
        clip_scores = [float(clip_loss(clip, *encode_instruction(pipe, t), delta)) for t in texts]
    scores = {"mse": mse, "clip": clip_scores}
    if edit_seeds:
        scores["edit"] = [float(np.mean([metrics.mse(ip2p_edit(pipe, [before], text, seed=seed + k)[0], after)
                                         for k in range(edit_seeds)])) for text in texts]
    z = paired_z(per_sample, true)
    best_other = min((c for c in range(len(texts)) if c != true), key=lambda c: mse[c])
    return {"direction": d.key, "edit": d.edit.name, "category": d.edit.category,
            "example_objects": [o.shape for o in d.examples[0].before.objects], "candidates": texts, "true": true,
            "scores": scores, "rank": {k: rank_of(v, true) for k, v in scores.items()}, "mse_paired_z": z,
            "best_other": texts[best_other], "best_other_z": z[best_other]}


def paired_z(per_sample: torch.Tensor, true: int) -> list[float]:
    """Per candidate, the mean of its per-sample MSE term minus the true wording's over the standard error of that
    difference (common draws); negative: the candidate fits the pair better. 0 for the true wording itself."""
    d = (per_sample - per_sample[true]).double()
    se = d.std(dim=1) / d.shape[1] ** 0.5
    return [0.0 if c == true else float(d[c].mean() / se[c]) for c in range(len(d))]


def summarise(rows: list[dict]) -> dict:
    n = len(rows)
    out = {"n": n, "chance_first": float(np.mean([1 / len(r["candidates"]) for r in rows])) if n else None}
    for key in ("mse", "clip", "edit"):
        if not rows or key not in rows[0]["rank"]:
            continue
        ranks = [r["rank"][key] for r in rows]
        out[key] = {"first": sum(x == 1 for x in ranks) / n if n else None,
                    "mean_rank": float(np.mean(ranks)) if n else None}
    # is the MSE term's preference resolved by its draws? |z| > 2: beyond the noise of the samples
    z = [r["best_other_z"] for r in rows]
    out["mse_wrong_word_wins_beyond_noise"] = sum(x < -2 for x in z)
    out["mse_true_word_wins_beyond_noise"] = sum(x > 2 for x in z)
    out["mse_within_noise"] = sum(abs(x) <= 2 for x in z)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--seed", type=int, default=0, help="eval_visii.py's --seed: which set of directions")
    p.add_argument("--edit-seeds", type=int, default=4, help="sampling seeds of the 'edit' score")
    p.add_argument("--samples", type=int, default=VisiiConfig().bank_rank_samples,
                   help="fixed (t, eps) samples of the 'mse' score (the bank init's ranking count)")
    p.add_argument("--model", default="bundled", help="InstructPix2Pix: bundled, a folder, a hub id or a bundle folder")
    p.add_argument("--clip", default=None, help="CLIP model (default: the bundle's)")
    p.add_argument("--limit", type=int, default=None, help="only the first N object-edit directions")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    from pairedit.bench.run import resolve_models
    from pairedit.models import load_clip, load_ip2p

    names = resolve_models(args.model, None, args.clip)
    pipe = load_ip2p(names.ip2p)
    clip, processor = load_clip(names.clip)
    directions = [d for d in ev.edit_directions(ev.sizes_of(ev.parse_args(["--tests", "8", "--seed", str(args.seed)])))
                  if d.edit.target is not None]
    directions = directions[:args.limit]
    rows, t0 = [], time.time()
    for i, d in enumerate(directions):
        rows.append(score_direction(pipe, clip, processor, d, args.edit_seeds, args.samples, args.seed))
        print(f"[{i + 1}/{len(directions)}] {d.edit.name}: true shape ranked {rows[-1]['rank']} "
              f"of {len(rows[-1]['candidates'])}; best other {rows[-1]['best_other']!r}, paired z "
              f"{rows[-1]['best_other_z']:.1f}", flush=True)
    res = {"seed": args.seed, "model": names.ip2p, "clip": names.clip, "edit_seeds": args.edit_seeds,
           "samples": args.samples, "seconds": round(time.time() - t0, 1), "summary": summarise(rows), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
