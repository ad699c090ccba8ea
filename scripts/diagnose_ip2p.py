"""Where does an InstructPix2Pix UNet go wrong? Two diagnostics behind docs/models.md ("Where the error is").

    python scripts/diagnose_ip2p.py sweep --n 84           # edit success vs sampling steps and guidance scales
    python scripts/diagnose_ip2p.py x0 --n 48              # one-step x0 estimate per guidance branch vs t
    python scripts/diagnose_ip2p.py x0 --unet /work/runs/default/ip2p/final   # a run's UNet in the bundle
    python scripts/diagnose_ip2p.py split --n 1024 --run /work/runs/default   # training loss: seen vs new pairs

- ``sweep``: edit success (and PSNR on the pixels the edit keeps / changes) on the first N held-out pairs of
  ``train eval`` for a few samplers settings; the gate itself is measured at 20 steps, s_T 7.5, s_I 1.5.
- ``x0``: noise the true after-latent to t, predict ε once with each branch of InstructPix2Pix Eq. 3 —
  e(c_I, c_T), e(c_I, ∅), e(∅, ∅) — and with their guided combination, decode x̂0 and score it on kept and
  changed pixels. Shows at which noise levels and in which branch the image condition is not reproduced.
- ``split``: the training loss ‖ε − ε_θ‖² per quarter of [0, T) on pairs the UNet trained on (the run's
  cached pairs), on new pairs of the training split and on held-out pairs, with the same noise and timesteps:
  a gap between the first two is memorisation, between the last two a failure to generalise to held-out
  scenes and (edit, object) combinations; no gap means the model is under-fitted.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from PIL import Image

from pairedit import models, world
from pairedit.images import to_tensor
from pairedit.sampling import combine_guidance, decode_latents, encode_image_condition, encode_text
from pairedit.training.evaluate import eval_ip2p, heldout_pairs

SWEEP = [dict(steps=20), dict(steps=50), dict(steps=100), dict(steps=20, s_text=3.0), dict(steps=20, s_image=3.0),
         dict(steps=20, s_text=1.0, s_image=1.0)]


def load(ip2p: str, unet: str | None):
    pipe = models.load_ip2p(ip2p)
    if unet:
        from diffusers import UNet2DConditionModel

        # rounded to fp16 and back, as the bundle ships it
        pipe.unet = UNet2DConditionModel.from_pretrained(unet).to(torch.float16).float().eval()
    return pipe


def sweep(pipe, n: int) -> dict:
    """``train eval``'s InstructPix2Pix scores (without the vague-instruction part) at each sampler setting."""
    out = {}
    for setting in SWEEP:
        res = eval_ip2p(pipe, n=n, n_vague=0, **setting)
        out[json.dumps(setting)] = {k: res[k] for k in ("edit_success", "psnr_kept", "psnr_changed")} | {
            "per_category_edit_success": {c: v["edit_success"] for c, v in res["per_category"].items()}}
        print(json.dumps(setting), json.dumps(out[json.dumps(setting)]), flush=True)
    return out


@torch.no_grad()
def x0_by_branch(pipe, n: int, timesteps=(900, 500, 100, 20), s_text: float = 7.5, s_image: float = 1.5) -> dict:
    from diffusers import DDPMScheduler

    pairs = heldout_pairs(n)  # the first n of `train eval`'s pairs
    before = to_tensor([p.images()[0] for p in pairs])
    after = to_tensor([p.images()[1] for p in pairs])
    image_cond = encode_image_condition(pipe, before)
    z0 = pipe.vae.encode(after).latent_dist.mode() * pipe.vae.config.scaling_factor
    cond = torch.cat([encode_text(pipe, p.edit.instruction(wording=0)) for p in pairs])
    uncond = encode_text(pipe, "").expand_as(cond)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    kept = ((before - after).abs().sum(1, keepdim=True) == 0).expand_as(after)

    def psnr(x: torch.Tensor, mask: torch.Tensor) -> float:  # images in [-1, 1]: peak-to-peak 2
        return float(10 * torch.log10(4 / ((x - after) ** 2)[mask].mean()))

    exact = decode_latents(pipe, z0)  # what a perfect prediction decodes to: the VAE's own ceiling
    out = {"exact_latent": {"psnr_kept": psnr(exact, kept), "psnr_changed": psnr(exact, ~kept)}}
    print(f"exact latent: kept {out['exact_latent']['psnr_kept']:.1f} changed {out['exact_latent']['psnr_changed']:.1f}")
    for t in timesteps:
        tt = torch.full((n,), t)
        z_t = scheduler.add_noise(z0, noise, tt)
        a = scheduler.alphas_cumprod[t]

        def eps(img, txt, z_t=z_t, tt=tt):
            return pipe.unet(torch.cat([z_t, img], 1), tt, encoder_hidden_states=txt).sample

        e_full, e_img, e_none = eps(image_cond, cond), eps(image_cond, uncond), eps(torch.zeros_like(image_cond), uncond)
        branches = {"e(c_I,c_T)": e_full, "e(c_I,0)": e_img, "e(0,0)": e_none,
                    "guided": combine_guidance(e_full, e_img, e_none, s_text, s_image)}
        out[t] = {}
        for name, e in branches.items():
            x0 = decode_latents(pipe, (z_t - (1 - a).sqrt() * e) / a.sqrt())
            out[t][name] = {"psnr_kept": psnr(x0, kept), "psnr_changed": psnr(x0, ~kept)}
        print(f"t={t:4d} " + " | ".join(f"{k} kept {v['psnr_kept']:.1f} changed {v['psnr_changed']:.1f}"
                                        for k, v in out[t].items()), flush=True)
    return out


@torch.no_grad()
def loss_by_split(pipe, n: int, run: str) -> dict:
    """The training loss per quarter of [0, T) on trained-on, new training-split and held-out pairs."""
    from diffusers import DDPMScheduler

    from pairedit.training.data import pairs_dataset
    from pairedit.training.trainers import denoising_errors

    if not (Path(run) / "data" / "pairs.npz").exists():
        raise SystemExit(f"{run}/data/pairs.npz not found: --run must be the run folder the UNet trained in")
    rng = random.Random("split")
    seen = pairs_dataset(Path(run) / "data" / "pairs.npz", n, seed=0)
    splits = {"trained_on": tuple([Image.fromarray(x) for x in seen[k][:n]] for k in ("before", "after"))
              + ([e.instruction(rng) for e in seen["edits"][:n]],)}
    fresh = [world.random_pair(random.Random("split-fresh"), "train") for _ in range(n)]
    for name, pairs in (("new_train_split", fresh), ("held_out", heldout_pairs(n))):
        befores, afters = zip(*(p.images() for p in pairs))
        splits[name] = (list(befores), list(afters), [p.edit.instruction(rng) for p in pairs])

    def latents(images: list) -> torch.Tensor:  # VAE latent modes, in batches
        return torch.cat([encode_image_condition(pipe, to_tensor(images[i:i + 64])) for i in range(0, n, 64)])

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    out, noise, t = {}, None, None
    for name, (before, after, instructions) in splits.items():
        image_cond, z0 = latents(before), latents(after) * pipe.vae.config.scaling_factor
        if noise is None:  # the same noise and timesteps for every split
            gen = torch.Generator().manual_seed(0)
            noise = torch.randn(z0.shape, generator=gen)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen)
        err = torch.cat([denoising_errors(pipe.unet, scheduler, z0[i:i + 64], encode_text(pipe, instructions[i:i + 64]),
                                          noise[i:i + 64], t[i:i + 64], image_cond[i:i + 64]).cpu()
                         for i in range(0, n, 64)])
        quarters = {f"t {lo}-{lo + 249}": float(err[(t >= lo) & (t < lo + 250)].mean()) for lo in (0, 250, 500, 750)}
        out[name] = {"mse": float(err.mean()), **quarters}
        print(f"{name:16s} " + " ".join(f"{k} {v:.5f}" for k, v in out[name].items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("sweep", "x0", "split"))
    ap.add_argument("--ip2p", default="bundled", help="InstructPix2Pix pipeline: bundled, a folder or hub id")
    ap.add_argument("--unet", help="a UNet folder to use in that pipeline instead (e.g. RUN/ip2p/final)")
    ap.add_argument("--n", type=int, default=48, help="held-out pairs (the first N of `train eval`'s 280)")
    ap.add_argument("--run", default="/work/runs/default", help="split only: the run folder the UNet trained in")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load(args.ip2p, args.unet)
    if args.what == "sweep":
        res = sweep(pipe, args.n)
    elif args.what == "x0":
        res = x0_by_branch(pipe, args.n)
    else:
        res = loss_by_split(pipe, args.n, args.run)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"what": args.what, "n": args.n, "unet": args.unet or args.ip2p, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
