"""Where does an InstructPix2Pix UNet go wrong? Diagnostics behind docs/models.md ("Where the error is").

    python scripts/diagnose_ip2p.py sweep --n 84           # edit success vs sampling steps and guidance scales
    python scripts/diagnose_ip2p.py x0 --n 48              # one-step x0 estimate per guidance branch vs t
    python scripts/diagnose_ip2p.py x0 --unet /work/runs/default/ip2p/final   # a run's UNet in the bundle
    python scripts/diagnose_ip2p.py split --n 1024 --run /work/runs/default   # training loss: seen vs new pairs
    python scripts/diagnose_ip2p.py combos --n 200         # object edits: held-out vs trained (edit, shape)
    python scripts/diagnose_ip2p.py confusion --n 3        # which shape pairs the named object is mistaken in
    python scripts/diagnose_ip2p.py binding --n 600        # edits naming one object of a busy scene: the right one?
    python scripts/diagnose_ip2p.py compound --n 150       # two edits in one instruction: are both done?
    python scripts/diagnose_ip2p.py absent --n 200         # an edit naming a shape that is not there: left alone?
    python scripts/diagnose_ip2p.py gate --unet RUN/ip2p/final --against OLD.json   # the #2 gate, paired vs OLD
    python scripts/diagnose_ip2p.py gate --sampling-steps 100 --against OLD.json    # the gate at the paper's 100 steps
    python scripts/diagnose_ip2p.py progress --outcomes A.json B.json:KEY C.json@STEPS --png P.png   # gate vs steps

- ``sweep``: edit success (and PSNR on the pixels the edit keeps / changes) on the first N held-out pairs of
  ``train eval`` for a few samplers settings; the gate itself is measured at 20 steps, s_T 7.5, s_I 1.5.
- ``x0``: noise the true after-latent to t, predict ε once with each branch of InstructPix2Pix Eq. 3 —
  e(c_I, c_T), e(c_I, ∅), e(∅, ∅) — and with their guided combination, decode x̂0 and score it on kept and
  changed pixels. Shows at which noise levels and in which branch the image condition is not reproduced.
- ``split``: the training loss ‖ε − ε_θ‖² per quarter of [0, T) on pairs the UNet trained on (the run's
  cached pairs), on new pairs of the training split and on held-out pairs, with the same noise and timesteps:
  a gap between the first two is memorisation, between the last two a failure to generalise to held-out
  scenes and (edit, object) combinations; no gap means the model is under-fitted.
- ``combos``: the gate's object edits (recolour, replace, remove, resize) are all on held-out (edit, shape)
  combinations. Each of N such pairs (held-out scenes) is matched with an edit of the same category on the
  same before-scene whose combination the UNet did train on (same target where another type allows it), and
  both are edited with the gate's sampler and seeds: a paired gap is a failure to generalise to new
  combinations, no gap means the object edits are hard as such.
- ``confusion``: for every ordered pair of shapes (named, other), N two-object held-out scenes and an object
  edit naming the first; is the named object edited, the other one, or neither (``evaluate.object_chosen``)?
  Set next to how alike the two shapes are to the text encoder (cosine of the shape word's conditioning in
  "remove the <shape>") and to the eye (IoU of the two shapes drawn at the same place and size).
- ``binding``: N held-out edits that name one object of a scene with two or three (``world.binding_pair``:
  held-out scenes and (edit, shape) combinations, the gate's sampler and first wording), scored like the gate
  (edit success) and by which object was edited; ≥ 500 of them tell binding levers apart to ±2 points, which
  the gate's 93 such edits cannot. Each pair's outcome is kept for paired comparisons (``metrics.mcnemar``).
- ``compound``: N held-out compound instructions (``world.compound_pair``: a style or background edit and an
  object edit, held-out scenes and (edit, shape) combinations), each worded twice with the parts' first
  wordings: joined by " and ", and by a bare space, which is how a VISII hybrid instruction (learned tokens
  followed by the user's words) reads. Scored by edit success against the true after-image of both edits and
  by which true after-image the output is nearest (``metrics.nearest_style``): both edits, the first or the
  second part alone, or the unedited input.
- ``absent``: N held-out object edits that name a shape the scene does not hold (``world.absent_pair``). There
  is nothing to do; is the scene left alone (the output nearer the input than the same edit done on any of its
  objects) or is an object edited as if it were named? The training mix has no such pairs unless
  ``train ip2p --absent-pairs`` adds them.
- ``gate``: the InstructPix2Pix gate of ``pairedit train eval`` (``evaluate.eval_ip2p``: 280 held-out pairs and
  the vague drawing instruction) on the pipeline with ``--unet`` swapped in, before it is exported.
- ``progress``: no model; the gate's edit success of earlier measurements (``--outcomes``) against the UNet's
  training steps, with the least-squares trend a + b·ln(steps) from ``--fit-from`` on and the step count at which
  it would reach 85%; ``--png`` plots it.

``--against OLD.json`` (``binding``, ``compound`` and ``gate``): the paired McNemar test of this run's per-pair edit success
against an earlier ``--json`` of the same measurement (same pairs and seeds, another UNet); ``OLD.json:KEY``
takes one entry of a file that keeps several, e.g. ``docs/models_eval/binding_mix_session12.json:gate_56018``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pairedit import metrics, models, world
from pairedit.editing import ip2p_edit, resolution
from pairedit.images import atomic_write, fit, to_pil, to_tensor
from pairedit.sampling import combine_guidance, decode_latents, encode_image_condition, encode_text
from pairedit.training.evaluate import GATE_STEPS, eval_ip2p, heldout_pairs, vae_roundtrip
from pairedit.training.trainers import trained_text_encoder

GATE = 0.85  # the edit success issue #2 asks of InstructPix2Pix
SWEEP = [dict(steps=20), dict(steps=50), dict(steps=100), dict(steps=20, s_text=3.0), dict(steps=20, s_image=3.0),
         dict(steps=20, s_text=1.0, s_image=1.0)]


def load(ip2p: str, unet: str | None):
    pipe = models.load_ip2p(ip2p)
    if unet:
        from diffusers import UNet2DConditionModel

        # rounded to fp16 and back, as the bundle ships it
        pipe.unet = UNet2DConditionModel.from_pretrained(unet).to(torch.float16).float().eval()
        text_encoder = trained_text_encoder(Path(unet), torch.float16)  # a --train-text-encoder run's, if any
        if text_encoder is not None:
            pipe.text_encoder = text_encoder.float().eval()
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


def matched_seen_edit(pair: world.Pair, rng: random.Random) -> world.Edit | None:
    """An edit of ``pair``'s category on its before-scene whose (edit, shape) combination is trained on."""
    types = [t for t, spec in world.EDIT_TYPES.items() if spec.category == pair.edit.category]
    shapes = sorted({o.shape for o in pair.before.objects})
    same_target = [world.Edit(t, pair.edit.target) for t in types]
    other_target = [world.Edit(t, s) for t in types for s in shapes if s != pair.edit.target]
    for candidates in (same_target, other_target):
        ok = [e for e in candidates if not world.is_heldout_combo(e) and world.is_applicable(pair.before, e)
              and world.changes_image(pair.before, world.apply_edit(pair.before, e))]
        if ok:
            return rng.choice(ok)
    return None


@torch.no_grad()
def seen_vs_heldout_combos(pipe, n: int) -> dict:
    """Edit success on held-out (edit, shape) combinations vs trained ones, on the same held-out scenes."""
    rng = random.Random("combos")
    types = tuple(t for t, spec in world.EDIT_TYPES.items() if spec.category in ("recolor", "replace", "remove", "resize"))
    rows = []
    while len(rows) < n:
        pair = world.make_pair(world.random_edit(rng, "test", types=types), rng, "test")
        seen = matched_seen_edit(pair, rng)
        if seen is None:
            continue
        rows.append((pair, world.Pair(pair.before, world.apply_edit(pair.before, seen), seen, "")))
    success: dict[str, list[bool]] = {"heldout": [], "seen": []}  # per pair, in order
    for i, (held, seen) in enumerate(rows):
        before = world.render(held.before)
        for arm, p in (("heldout", held), ("seen", seen)):
            edited = ip2p_edit(pipe, [before], p.edit.instruction(wording=0), seed=i)[0]
            success[arm].append(metrics.edit_success(before, edited, world.render(p.after)))
        if (i + 1) % 20 == 0:
            print(i + 1, {a: sum(v) / len(v) for a, v in success.items()}, flush=True)
    categories = [held.edit.category for held, _ in rows]
    per_category = {}
    for c in sorted(set(categories)):
        mine = [i for i, ci in enumerate(categories) if ci == c]
        per_category[c] = {"n": len(mine), **{a: sum(success[a][i] for i in mine) / len(mine) for a in success}}
    res = {"n": n, "edit_success": {a: sum(v) / n for a, v in success.items()},
           "mcnemar_heldout_only_seen_only_p": metrics.mcnemar(success["heldout"], success["seen"]),
           "per_category": per_category,
           "same_target": sum(h.edit.target == s.edit.target for h, s in rows) / n,
           "per_pair": {a: "".join(str(int(ok)) for ok in v) for a, v in success.items()}}
    print(json.dumps({k: v for k, v in res.items() if k != "per_pair"}), flush=True)
    return res


def shape_similarity(pipe) -> tuple[dict, dict]:
    """(text, visual) similarity of each ordered shape pair; see ``confusion``."""
    emb = {s: encode_text(pipe, f"remove the {s}")[0] for s in world.SHAPES}
    pos = len(pipe.tokenizer("remove the square").input_ids) - 2  # the shape word (before end-of-text)
    text = {(a, b): float(torch.cosine_similarity(emb[a][pos], emb[b][pos], dim=0))
            for a in world.SHAPES for b in world.SHAPES if a != b}
    masks = {s: world.object_masks(world.Scene("plain", (world.Obj(s, "red", "large", 0.5, 0.5),)))[0]
             for s in world.SHAPES}
    visual = {(a, b): float((masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum())
              for a in world.SHAPES for b in world.SHAPES if a != b}
    return text, visual


@torch.no_grad()
def binding_confusion(pipe, n: int) -> dict:
    """Named / other / none per ordered shape pair, with the two similarities (see the module docstring)."""
    from pairedit.training.evaluate import object_chosen, same_edit_on_other_objects

    rng = random.Random("confusion")
    types = tuple(t for t, spec in world.EDIT_TYPES.items() if spec.needs_target)
    text, visual = shape_similarity(pipe)
    rows = []
    for (a, b) in text:
        done = 0
        while done < n:
            edit = world.random_edit(rng, "any", types=types)
            edit = world.Edit(edit.type, a, edit.value)
            if edit.type == f"replace_{b}" or edit.type == f"replace_{a}":
                continue
            try:
                scene = world.random_scene(rng, "test", n_objects=2, style="photo", shapes=(a, b))
            except world.WorldError:
                continue
            if not world.is_applicable(scene, edit):
                continue
            after_scene = world.apply_edit(scene, edit)
            wrong = same_edit_on_other_objects(scene, edit)
            if not world.changes_image(scene, after_scene) or not wrong:
                continue
            before, after = world.render(scene), world.render(after_scene)
            out = ip2p_edit(pipe, [before], edit.instruction(wording=0), seed=len(rows))[0]
            rows.append({"named": a, "other": b, "edit": edit.name, "text_cos": text[a, b], "iou": visual[a, b],
                         "chosen": object_chosen(out, before, after, [world.render(w) for w in wrong]),
                         "edit_success": metrics.edit_success(before, out, after)})
            done += 1
        print(a, b, [r["chosen"] for r in rows[-n:]], flush=True)

    def share_other(sel: list[dict]) -> dict:
        return {"n": len(sel), "other": sum(r["chosen"] == "other" for r in sel) / max(len(sel), 1),
                "edit_success": _success(sel)}

    def median(key: str) -> float:
        return sorted(r[key] for r in rows)[len(rows) // 2]

    def halves(key: str, mid: float) -> dict:
        return {f"< {mid:.3f}": share_other([r for r in rows if r[key] < mid]),
                f">= {mid:.3f}": share_other([r for r in rows if r[key] >= mid])}

    t_mid, v_mid = median("text_cos"), median("iou")
    res = {"all": share_other(rows), "by_text_cos": halves("text_cos", t_mid), "by_iou": halves("iou", v_mid),
           "by_both": {f"text {'hi' if th else 'lo'} / iou {'hi' if vh else 'lo'}": share_other(
               [r for r in rows if (r["text_cos"] >= t_mid) == th and (r["iou"] >= v_mid) == vh])
               for th in (False, True) for vh in (False, True)},
           "rows": rows}
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}), flush=True)
    return res


def _success(rows: list[dict]) -> float:
    return sum(r["edit_success"] for r in rows) / max(len(rows), 1)


def _progress(i: int, n: int, rows: list[dict], every: int) -> None:
    if (i + 1) % every == 0:
        print(f"{i + 1}/{n}: edit success {_success(rows):.3f}", flush=True)


@torch.no_grad()
def binding(pipe, n: int, steps: int = GATE_STEPS) -> dict:
    """Edit success and named / other / none on N held-out edits naming one object of a busy scene."""
    from pairedit.training.evaluate import which_object

    rng = random.Random("binding-eval")
    size = resolution(pipe)  # the world's 64×64 for the bundled models
    rows = []
    for i in range(n):
        pair = world.binding_pair(rng, "test")
        before, after = (fit(im, size) for im in pair.images())
        out = ip2p_edit(pipe, [before], pair.edit.instruction(wording=0), seed=i, steps=steps)[0]
        rows.append({"edit": pair.edit.name, "category": pair.edit.category, "objects": len(pair.before.objects),
                     "edit_success": metrics.edit_success(before, out, after),
                     "chosen": which_object(out, before, after, pair.before, pair.edit, size)})
        _progress(i, n, rows, every=50)

    def summary(sel: list[dict]) -> dict:
        chosen = [r["chosen"] for r in sel if r["chosen"]]
        return {"n": len(sel), "edit_success": _success(sel),
                "n_with_other": len(chosen),
                **{k: chosen.count(k) / max(len(chosen), 1) for k in ("named", "other", "none")}}

    res = {"all": summary(rows),
           "by_category": {c: summary([r for r in rows if r["category"] == c]) for c in world.TARGETED_CATEGORIES},
           "by_objects": {k: summary([r for r in rows if r["objects"] == k]) for k in (2, 3)},
           "per_pair_edit_success": "".join(str(int(r["edit_success"])) for r in rows),
           "per_pair_chosen": [r["chosen"] for r in rows]}
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("per_pair")}), flush=True)
    return res


def absent(pipe, n: int) -> dict:
    """On N held-out edits naming a shape the scene lacks (``world.absent_pair``), is the scene left alone or is one
    of its objects edited as if named? Nearest (pixel MSE) among the input and each object's edit."""
    from pairedit.training.evaluate import same_edit_on_other_objects

    rng = random.Random("absent-eval")
    size = resolution(pipe)
    rows = []
    for i in range(n):
        pair = world.absent_pair(rng, "test")
        before = fit(world.render(pair.before), size)
        edited = {f"object{k}": fit(world.render(s), size)
                  for k, s in enumerate(same_edit_on_other_objects(pair.before, pair.edit))}
        if not edited:  # no object the edit could have hit visibly
            continue
        out = ip2p_edit(pipe, [before], pair.edit.instruction(wording=0), seed=i)[0]
        left_alone = metrics.nearest_style(out, edited, input=before) == metrics.NO_STYLE
        rows.append({"edit": pair.edit.name, "category": pair.edit.category, "left_alone": left_alone,
                     "psnr_to_input": metrics.psnr(out, before)})

    def summary(sel: list[dict]) -> dict:
        return {"n": len(sel), "left_alone": sum(r["left_alone"] for r in sel) / max(len(sel), 1),
                "psnr_to_input": float(np.mean([r["psnr_to_input"] for r in sel])) if sel else None}

    res = {"all": summary(rows),
           "by_category": {c: summary([r for r in rows if r["category"] == c]) for c in world.TARGETED_CATEGORIES},
           "per_pair_left_alone": "".join(str(int(r["left_alone"])) for r in rows)}
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("per_pair")}), flush=True)
    return res


COMPOUND_OUTCOMES = ("both", "first only", "second only", metrics.NO_STYLE)


@torch.no_grad()
def compound(pipe, n: int) -> dict:
    """Edit success and which edits were done on N held-out compound instructions, joined two ways."""
    rng = random.Random("compound-eval")
    size = resolution(pipe)
    rows = []
    for i in range(n):
        pair = world.compound_pair(rng, "test")
        before, after = (fit(im, size) for im in pair.images())
        parts = (pair.edit.first, pair.edit.second)
        afters = {k: fit(world.render(s), size) for k, s in zip(COMPOUND_OUTCOMES, pair.edit.outcomes(pair.before))}
        for joiner in (" and ", " "):
            instruction = joiner.join(e.instruction(wording=0) for e in parts)
            out = ip2p_edit(pipe, [before], instruction, seed=i)[0]
            rows.append({"edit": pair.edit.name, "joiner": joiner, "edit_success": metrics.edit_success(before, out, after),
                         "wide_first": parts[0].category in world.SCENE_WIDE_CATEGORIES,
                         "object_category": next(e.category for e in parts if e.category not in world.SCENE_WIDE_CATEGORIES),
                         "nearest": metrics.nearest_style(out, afters, input=before)})
        _progress(i, n, rows, every=25)

    def summary(sel: list[dict]) -> dict:
        nearest = [r["nearest"] for r in sel]
        return {"n": len(sel), "edit_success": _success(sel),
                **{k: nearest.count(k) / max(len(sel), 1) for k in COMPOUND_OUTCOMES}}

    res = {"all": summary(rows)}
    for name, joiner in (("and", " and "), ("space", " ")):
        sel = [r for r in rows if r["joiner"] == joiner]
        res[name] = {"all": summary(sel),
                     "scene_wide_first": summary([r for r in sel if r["wide_first"]]),
                     "object_first": summary([r for r in sel if not r["wide_first"]]),
                     "by_object_category": {c: summary([r for r in sel if r["object_category"] == c])
                                            for c in world.CATEGORIES if c not in world.SCENE_WIDE_CATEGORIES}}
    res["per_pair_edit_success"] = "".join(str(int(r["edit_success"])) for r in rows)
    res["per_pair_nearest"] = [r["nearest"] for r in rows]
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("per_pair")}), flush=True)
    return res


def load_entry(path: str) -> dict:
    """An earlier gate (or binding) measurement: FILE or FILE:KEY[:KEY...] (nested entries).

    Accepts this script's ``--json``, a ``train eval`` results file or a bare entry, like ``--against``.
    """
    file, keys = path, []
    while not Path(file).is_file() and ":" in file:  # peel keys off the end until the rest is a file
        file, _, key = file.rpartition(":")
        keys.insert(0, key)
    entry = json.loads(Path(file).read_text())
    for key in keys:
        entry = entry[key]
    return entry.get("results", entry.get("ip2p", entry))  # this script's --json, a `train eval` entry, or bare


def load_outcomes(path: str) -> str:
    """The per-pair edit success string of an earlier measurement (``load_entry``)."""
    return load_entry(path)["per_pair_edit_success"]


def paired_against(res: dict, path: str) -> dict:
    """McNemar of this measurement's per-pair edit success vs an earlier ``--json`` of it (same pairs, seeds).

    ``path`` may end in ``:KEY`` to take one entry of a file that keeps several (models_eval/binding_mix_*.json).
    """
    a = [c == "1" for c in load_outcomes(path)]
    b = [c == "1" for c in res["per_pair_edit_success"]]
    only_old, only_new, p = metrics.mcnemar(a, b)
    return {"against": path, "old_edit_success": sum(a) / len(a), "new_edit_success": sum(b) / len(b),
            "only_old": only_old, "only_new": only_new, "p": p}


def progress(points: list[str], fit_from: int, png: str | None) -> dict:
    """The gate's edit success against the UNet's training steps, and the fit a + b·ln(steps) from ``fit_from``.

    ``points``: gate measurements (``load_entry`` paths), each ``PATH@STEPS`` where the entry does not record
    ``unet_trained_steps``. The fit says when more steps of the recipe would reach the 85% gate if the past trend
    held; a run that falls below it beyond noise refutes that (docs/models.md, session 31).
    """
    rows = []
    for spec in points:
        path, _, steps = spec.partition("@")
        entry = load_entry(path)
        steps = int(steps) if steps else entry.get("unet_trained_steps")
        if steps is None:
            raise SystemExit(f"{path} does not say how many steps its UNet trained: give it as {path}@STEPS")
        rows.append({"source": path, "steps": int(steps), "edit_success": entry["edit_success"]})
    fitted = [r for r in rows if r["steps"] >= fit_from]
    if len({r["steps"] for r in fitted}) < 2:
        raise SystemExit(f"need measurements at two or more step counts from {fit_from} on to fit a trend")
    b, a = np.polyfit(np.log([r["steps"] for r in fitted]), [r["edit_success"] for r in fitted], 1)
    res = {"points": rows, "fit": {"from_steps": fit_from, "n": len(fitted), "a": a, "b": b,
                                   "per_doubling": b * math.log(2),
                                   "steps_for_gate": math.exp((GATE - a) / b) if b > 0 else None}}
    if png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["steps"] for r in rows], [r["edit_success"] for r in rows], "o", label="gate measurements")
        xs = np.geomspace(fit_from, max(2 * max(r["steps"] for r in rows), res["fit"]["steps_for_gate"] or 0), 50)
        ax.plot(xs, a + b * np.log(xs), "--", label=f"fit from {fit_from:,} steps: {b * math.log(2):+.3f} per doubling")
        ax.axhline(GATE, color="k", lw=0.8, label=f"gate {GATE:.0%}")
        ax.set(xscale="log", xlabel="InstructPix2Pix training steps", ylabel="edit success (280 held-out pairs)")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=100))
        plt.close(fig)
    print(json.dumps(res["fit"]), flush=True)
    return res


@torch.no_grad()
def plateau(pipe, outcomes: list[str], seeds: int) -> dict:
    """Which gate pairs fail under every UNet measured, and why: the autoencoder ceiling, or the sampling seed?

    ``outcomes``: earlier gate measurements (``load_outcomes`` paths) of different UNets on the same 280 pairs
    and seeds. A pair that fails under all of them bounds what another cycle of the same recipe can reach; the
    best-of union is an upper bound on picking among them. Pairs that are not always won are retried with
    ``seeds`` other sampling seeds on ``pipe``: a pair won under some seeds is sampling luck, not a lost edit.
    """
    runs = [[c == "1" for c in load_outcomes(path)] for path in outcomes]
    pairs = heldout_pairs(len(runs[0]))
    size = resolution(pipe)
    befores, afters = zip(*((fit(b, size), fit(a, size)) for b, a in (p.images() for p in pairs)))
    ceilings = to_pil(vae_roundtrip(pipe.vae, to_tensor(list(afters))))
    rows = []
    for i, (p, before, after, ceil) in enumerate(zip(pairs, befores, afters, ceilings)):
        wins = sum(r[i] for r in runs)
        row = {"index": i, "category": p.edit.category, "wins": wins,
               "objects": len(p.before.objects) if p.edit.target is not None else None,
               "vae_ceiling_edit_success": metrics.edit_success(before, ceil, after)}
        if wins < len(runs) and seeds:  # the gate's seed for pair i is i; these are others
            outs = [ip2p_edit(pipe, [before], p.edit.instruction(wording=0), seed=10_000 * (k + 1) + i)[0]
                    for k in range(seeds)]
            row["other_seed_success"] = sum(metrics.edit_success(before, o, after) for o in outs) / seeds
        rows.append(row)
        if (i + 1) % 40 == 0:
            print(f"{i + 1}/{len(pairs)}", flush=True)

    def describe(sel: list[dict]) -> dict:
        within = [r for r in sel if r["vae_ceiling_edit_success"]]
        retried = [r for r in within if "other_seed_success" in r]
        return {"n": len(sel), "by_category": _counts(r["category"] for r in sel),
                "targeted_by_objects_in_scene": _counts(str(r["objects"]) for r in sel if r["objects"]),
                "not_targeted": sum(r["objects"] is None for r in sel),
                "fail_vae_ceiling": len(sel) - len(within),
                "within_ceiling_won_by_another_seed": sum(r.get("other_seed_success", 0) > 0 for r in retried),
                "within_ceiling_mean_other_seed_success": (float(np.mean([r["other_seed_success"] for r in retried]))
                                                           if retried else None)}

    always_fail = [r for r in rows if r["wins"] == 0]
    flipping = [r for r in rows if 0 < r["wins"] < len(runs)]
    res = {"outcomes": outcomes, "n": len(rows), "seeds": seeds,
           "edit_success_each": [sum(r) / len(r) for r in runs],
           "always_won": sum(r["wins"] == len(runs) for r in rows),
           "best_of_edit_success": sum(r["wins"] > 0 for r in rows) / len(rows),
           "vae_ceiling_edit_success": float(np.mean([r["vae_ceiling_edit_success"] for r in rows])),
           "always_failed": describe(always_fail), "flipping": describe(flipping),
           "rows": [r for r in rows if r["wins"] < len(runs)]}
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}), flush=True)
    return res


def _counts(values) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("sweep", "x0", "split", "combos", "confusion", "binding", "compound",
                                        "absent", "gate", "plateau", "progress"))
    ap.add_argument("--ip2p", default="bundled", help="InstructPix2Pix pipeline: bundled, a folder or hub id")
    ap.add_argument("--unet", help="a UNet folder to use in that pipeline instead (e.g. RUN/ip2p/final; its text_encoder/ "
                                   "too, if the run trained one)")
    ap.add_argument("--n", type=int, default=48, help="held-out pairs (the first N of `train eval`'s 280)")
    ap.add_argument("--run", default="/work/runs/default", help="split only: the run folder the UNet trained in")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--against", help="binding/compound/gate: an earlier --json of the same measurement, for McNemar "
                    "(FILE or FILE:KEY for one entry of a file that keeps several)")
    ap.add_argument("--outcomes", nargs="+", metavar="FILE[:KEY]",
                    help="plateau: earlier gate measurements of different UNets (as for --against); progress: gate "
                         "measurements along training, FILE[:KEY]@STEPS where the entry does not record its steps")
    ap.add_argument("--sampling-steps", type=int, default=GATE_STEPS,
                    help=f"gate/binding: Euler-ancestral steps (default: the gate's, {GATE_STEPS})")
    ap.add_argument("--fit-from", type=int, default=24_000, help="progress only: fit the trend from this many steps on")
    ap.add_argument("--png", help="progress only: write the plot here")
    ap.add_argument("--seeds", type=int, default=4, help="plateau only: other sampling seeds per pair not always won")
    args = ap.parse_args()
    if args.what in ("plateau", "progress") and not args.outcomes:
        ap.error(f"{args.what} needs --outcomes: two or more earlier gate measurements")
    torch.set_num_threads(args.threads)
    pipe = None if args.what == "progress" else load(args.ip2p, args.unet)
    if args.what == "progress":
        res = progress(args.outcomes, args.fit_from, args.png)
    elif args.what == "sweep":
        res = sweep(pipe, args.n)
    elif args.what == "x0":
        res = x0_by_branch(pipe, args.n)
    elif args.what == "combos":
        res = seen_vs_heldout_combos(pipe, args.n)
    elif args.what == "confusion":
        res = binding_confusion(pipe, args.n)
    elif args.what == "binding":
        res = binding(pipe, args.n, steps=args.sampling_steps)
    elif args.what == "compound":
        res = compound(pipe, args.n)
    elif args.what == "absent":
        res = absent(pipe, args.n)
    elif args.what == "gate":
        res = eval_ip2p(pipe, steps=args.sampling_steps)
    elif args.what == "plateau":
        res = plateau(pipe, args.outcomes, args.seeds)
    else:
        res = loss_by_split(pipe, args.n, args.run)
    if args.against:
        res["against"] = paired_against(res, args.against)
        print(json.dumps(res["against"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"what": args.what, "n": args.n, "unet": args.unet or args.ip2p, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
