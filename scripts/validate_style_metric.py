#!/usr/bin/env python
"""Does ``metrics.nearest_style`` name the drawing style of an image whose lines are slightly off?

A drawing-style score must credit the style a method drew even when its lines are a pixel away from the true
after-image's. This takes each drawing style's true after-image of N held-out photos, perturbs it the way a
model's output differs from the truth (shifted by 1 or 2 px; the bundled VAE's round trip, what a perfect
latent edit outputs) and asks which style it is nearest, in exact pixels and after a Gaussian blur of each σ.

    python scripts/validate_style_metric.py --n 100 --json docs/visii/style_metric.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from pairedit import metrics, models, world
from pairedit.bench.methods import style_candidates
from pairedit.images import fit, to_pil, to_tensor
from pairedit.training.evaluate import vae_roundtrip

SIGMAS = (0.0, 1.0, 2.0, 3.0)


def shifted(im: Image.Image, dx: int, dy: int) -> Image.Image:
    return Image.fromarray(np.roll(np.asarray(im), (dy, dx), axis=(0, 1)))


def validate(n: int, ip2p: str = "bundled", seed: int = 77) -> dict:
    """Share of perturbed true after-images nearest their own style, per perturbation, σ and style."""
    vae = models.load_ip2p(ip2p).vae
    pairs = world.direction_pairs(world.Edit("drawing", value=world.DRAWING_STYLES[0]), n, seed=seed)
    hits: dict[str, dict[str, dict[str, list[bool]]]] = {}
    for p in pairs:
        cands = style_candidates(p, world.IMAGE_SIZE)
        photo = fit(p.images()[0], world.IMAGE_SIZE)
        roundtrip = dict(zip(cands, to_pil(vae_roundtrip(vae, to_tensor(list(cands.values()))))))
        for style, im in cands.items():
            for name, pert in (("shift 1 px", shifted(im, 1, 0)), ("shift 1 px diagonally", shifted(im, 1, 1)),
                               ("shift 2 px", shifted(im, 2, 0)), ("VAE round trip", roundtrip[style])):
                for sigma in SIGMAS:
                    ok = metrics.nearest_style(pert, cands, input=photo, blur=sigma) == style
                    hits.setdefault(name, {}).setdefault(f"sigma {sigma:g}", {}).setdefault(style, []).append(ok)
    return {"n": n, "seed": seed, "ip2p": ip2p,
            "share_nearest_own_style": {name: {s: {st: float(np.mean(v)) for st, v in by_style.items()}
                                               for s, by_style in by_sigma.items()} for name, by_sigma in hits.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="held-out photos (default: %(default)s)")
    ap.add_argument("--ip2p", default="bundled", help="the pipeline whose VAE makes the round trips")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    res = validate(args.n, args.ip2p)
    for name, by_sigma in res["share_nearest_own_style"].items():
        print(name, json.dumps(by_sigma))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
