"""Quality gates of the embedded default, measured on the world's held-out split only.

    pairedit train eval --models bundled --out docs/models_eval     # or --models RUN/bundle-folder

- CLIP: caption → image top-1 retrieval among 100 held-out images;
- VAE: reconstruction PSNR on held-out images;
- text-to-image: CLIP R-precision (true caption top-1 among 10) and a sample grid;
- InstructPix2Pix (unambiguous instructions, s_T = 7.5, s_I = 1.5, 20 Euler-ancestral steps): edit
  success, PSNR to the true after-image per category, and for the vague "turn it into a drawing" the
  share of outputs landing on each drawing style; next to it the autoencoder ceiling: the same scores
  for the true after-image passed through the VAE (what a perfect latent edit would output); and for
  edits naming one of several objects, whether the output edited that object, another one, or none;
- seconds to load the bundle and edit one image.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import metrics, models, world
from ..editing import EditConfig, ip2p_edit, resolution
from ..images import atomic_write, fit, grid, save_image, to_pil, to_tensor

GATE_STEPS = EditConfig.steps  # Euler-ancestral steps of the InstructPix2Pix gate: the editing default


def heldout_scenes(n: int, seed: int = 1234) -> list[world.Scene]:
    rng = random.Random(f"eval-scenes:{seed}")
    return [world.random_scene(rng, "test") for _ in range(n)]


def heldout_pairs(n: int, seed: int = 1234, types: tuple[str, ...] | None = None) -> list[world.Pair]:
    """Held-out scenes; object edits on held-out (edit, shape) combinations where the type has them."""
    rng = random.Random(f"eval-pairs:{seed}")
    out = []
    while len(out) < n:
        edit = world.random_edit(rng, "test", types=types)
        if edit.type == "drawing":
            continue
        out.append(world.make_pair(edit, rng, "test"))
    return out


@torch.no_grad()
def eval_clip(clip, processor, n: int = 100, n_twins: int = 500) -> dict:
    """The gate (caption → image top-1 among ``n`` held-out images) and shape awareness: for ``n_twins`` held-out
    scenes and their shape twins (one object's shape changed), how often a caption picks its own image over the
    twin's, and an image its own caption (chance: 0.5)."""
    feats = metrics.ClipFeatures(clip, processor)
    scenes = heldout_scenes(n)
    img = feats.image_features([world.render(s) for s in scenes])
    txt = feats.text_features([s.caption for s in scenes])
    top1 = (txt @ img.T).argmax(dim=1) == torch.arange(n)
    pairs = world.shape_twins(random.Random("eval-shape-twins"), n_twins, "test")
    img = feats.image_features([world.render(s) for pair in pairs for s in pair]).view(n_twins, 2, -1)
    txt = feats.text_features([s.caption for pair in pairs for s in pair]).view(n_twins, 2, -1)
    sim = torch.einsum("nid,njd->nij", txt, img)  # [scene, caption, image]
    caption_picks = (sim[:, 0, 0] > sim[:, 0, 1]).float().mean() / 2 + (sim[:, 1, 1] > sim[:, 1, 0]).float().mean() / 2
    image_picks = (sim[:, 0, 0] > sim[:, 1, 0]).float().mean() / 2 + (sim[:, 1, 1] > sim[:, 0, 1]).float().mean() / 2
    return {"caption_to_image_top1": float(top1.float().mean()), "n": n,
            "shape_twins_caption_to_image": float(caption_picks), "shape_twins_image_to_caption": float(image_picks),
            "n_shape_twins": n_twins}


@torch.no_grad()
def vae_roundtrip(vae, x: torch.Tensor) -> torch.Tensor:
    """decode(encode(x)) with the latent mode, in batches: what a pipeline outputs when its latent is exactly right."""
    x = x.to(vae.device, vae.dtype)
    return torch.cat([vae.decode(vae.encode(x[i:i + 64]).latent_dist.mode()).sample for i in range(0, len(x), 64)]).float()


@torch.no_grad()
def eval_vae(vae, n: int = 256) -> dict:
    scenes = heldout_scenes(n, seed=99)
    x = to_tensor([world.render(s) for s in scenes])
    rec = vae_roundtrip(vae, x)
    psnrs = [metrics.psnr(a, b) for a, b in zip(x, rec.clamp(-1, 1))]
    return {"psnr_db": float(np.mean(psnrs)), "n": n}


@torch.no_grad()
def eval_t2i(sd, clip, processor, n: int = 100, steps: int = 25, guidance: float = 7.5,
             grid_path: Path | None = None) -> dict:
    feats = metrics.ClipFeatures(clip, processor)
    scenes = heldout_scenes(n, seed=7)
    captions = [s.caption for s in scenes]
    gen = torch.Generator().manual_seed(0)
    size = sd.unet.config.sample_size * sd.vae_scale_factor
    images = []
    for i in range(0, n, 25):
        images += sd(captions[i:i + 25], num_inference_steps=steps, guidance_scale=guidance, generator=gen,
                     height=size, width=size).images
    img = feats.image_features(images)
    txt = feats.text_features(captions)
    rng = random.Random(0)
    hits = []
    for i in range(n):
        others = rng.sample([j for j in range(n) if j != i], 9)
        cand = torch.stack([txt[i]] + [txt[j] for j in others])
        hits.append(int((cand @ img[i]).argmax()) == 0)
    if grid_path is not None:
        rows = [[world.render(scenes[j]), images[j]] for j in range(8)]
        save_image(grid(rows, labels=["true scene", "generated"], row_labels=captions[:8]),
                   grid_path)
    return {"r_precision_top1_of_10": float(np.mean(hits)), "n": n, "steps": steps, "guidance": guidance}


@torch.no_grad()
def eval_ip2p(pipe, n: int = 280, n_vague: int = 60, grid_path: Path | None = None, steps: int = GATE_STEPS,
              s_text: float = 7.5, s_image: float = 1.5) -> dict:
    """The gate's scores at the issue's sampler settings; other settings for diagnostics (scripts/diagnose_ip2p.py)."""
    pairs = heldout_pairs(n)
    size = resolution(pipe)  # the world's 64×64 for the bundled models
    befores, afters = zip(*((fit(b, size), fit(a, size)) for b, a in (p.images() for p in pairs)))
    sampler = dict(steps=steps, s_text=s_text, s_image=s_image)
    outputs = [ip2p_edit(pipe, [before], p.edit.instruction(wording=0), seed=i, **sampler)[0]
               for i, (p, before) in enumerate(tqdm(list(zip(pairs, befores)), desc="ip2p eval", mininterval=5))]
    # The autoencoder ceiling: an edit whose change is smaller than the VAE's reconstruction error cannot
    # succeed through this VAE, however good the UNet.
    ceilings = to_pil(vae_roundtrip(pipe.vae, to_tensor(list(afters))))
    by_cat: dict[str, list[dict]] = {}
    targeted: dict[int, list[dict]] = {}  # edits naming an object ("the circle"), by objects in the scene
    by_size: dict[str, list[dict]] = {}  # ... and by the named object's size
    chosen = []  # busy scenes: did the output edit the named object, another one, or none?
    rows_in_order = []
    for p, before, after, out, ceil in zip(pairs, befores, afters, outputs, ceilings):
        row = {
            "edit_success": metrics.edit_success(before, out, after),
            "psnr_to_true_after": metrics.psnr(out, after),
            "input_psnr_to_true_after": metrics.psnr(before, after),
            # where the error is: the pixels the edit keeps vs those it changes
            "psnr_kept": metrics.psnr_kept(before, out, after, cap=metrics.PSNR_CAP_DB),
            "psnr_changed": metrics.psnr_changed(before, out, after, cap=metrics.PSNR_CAP_DB),
            "vae_ceiling_edit_success": metrics.edit_success(before, ceil, after),
            "vae_ceiling_psnr_kept": metrics.psnr_kept(before, ceil, after, cap=metrics.PSNR_CAP_DB)}
        rows_in_order.append(row)
        by_cat.setdefault(p.edit.category, []).append(row)
        if p.edit.target is not None:
            targeted.setdefault(len(p.before.objects), []).append(row)
            by_size.setdefault(p.before.objects[p.before.find(p.edit.target)].size, []).append(row)
            which = which_object(out, before, after, p.before, p.edit, size)
            if which is not None:
                chosen.append((row["edit_success"], which))

    def means(rows: list[dict]) -> dict:
        return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}

    per_cat = {c: {"n": len(v), **means(v)} for c, v in sorted(by_cat.items())}
    # With one object "the circle" is given away; with two or three the model must find it (binding).
    by_objects = {str(k): {"n": len(v), **means(v)} for k, v in sorted(targeted.items())}
    # A small object covers ≈ 3×3 latent cells: hard to find, and its change is near the VAE's error.
    sizes = {s: {"n": len(by_size[s]), **means(by_size[s])} for s in world.SIZES if s in by_size}
    overall = means(rows_in_order)
    # The vague instruction: which drawing style does each output land on?
    # blurred: the same outputs scored by the styles' look rather than their exact lines (metrics.STYLE_BLUR_SIGMA)
    shares, blurred = _vague_style_shares(pipe, n_vague, sampler) if n_vague else ({}, {})
    if grid_path is not None:
        rows = [[befores[j], outputs[j], afters[j]] for j in range(0, min(n, 70), 7)]
        save_image(grid(rows, labels=["before", "InstructPix2Pix", "true after"],
                        row_labels=[pairs[j].edit.instruction(wording=0) for j in range(0, min(n, 70), 7)]), grid_path)
    return {"edit_success": overall["edit_success"], "n": len(pairs), "per_category": per_cat,
            "vae_ceiling_edit_success": overall["vae_ceiling_edit_success"],
            "psnr_kept": overall["psnr_kept"], "psnr_changed": overall["psnr_changed"],
            "vae_ceiling_psnr_kept": overall["vae_ceiling_psnr_kept"],
            "targeted_edits_by_objects_in_scene": by_objects,
            "targeted_edits_by_object_size": sizes,
            "targeted_edits_object_chosen": _object_chosen_shares(chosen),
            # one character per held-out pair, in order: paired comparisons of two models (metrics.mcnemar)
            "per_pair_edit_success": "".join(str(int(r["edit_success"])) for r in rows_in_order),
            "vague_drawing_style_shares": shares, "vague_drawing_style_shares_blurred": blurred, **sampler}


def same_edit_on_other_objects(scene: world.Scene, edit: world.Edit) -> list[world.Scene]:
    """The after-scenes of ``edit`` applied to each other object of ``scene`` instead of its target.

    What an edit that picks the wrong object ("remove the square" removing the diamond) would produce;
    objects the edit does not apply to, or does not visibly change, are left out.
    """
    outs = []
    for shape in sorted({o.shape for o in scene.objects} - {edit.target}):
        other = world.Edit(edit.type, shape, edit.value)
        if world.is_applicable(scene, other):
            after = world.apply_edit(scene, other)
            if world.changes_image(scene, after):
                outs.append(after)
    return outs


def object_chosen(output: metrics.ImageLike, before: metrics.ImageLike, true_after: metrics.ImageLike,
                  wrong_afters: list[metrics.ImageLike]) -> str:
    """'named', 'other' or 'none': whose true after-image (or the unedited input) is nearest the output."""
    candidates = {"named": true_after, **{f"other{i}": w for i, w in enumerate(wrong_afters)}}
    nearest = metrics.nearest_style(output, candidates, input=before)
    if nearest == metrics.NO_STYLE:
        return "none"
    return "named" if nearest == "named" else "other"


def which_object(output: metrics.ImageLike, before: metrics.ImageLike, true_after: metrics.ImageLike,
                 scene: world.Scene, edit: world.Edit, size: int = world.IMAGE_SIZE) -> str | None:
    """``object_chosen`` for an edit of ``scene``, or None when no other object could have been edited the same way."""
    wrong = [fit(world.render(s), size) for s in same_edit_on_other_objects(scene, edit)]
    return object_chosen(output, before, true_after, wrong) if wrong else None


def _object_chosen_shares(chosen: list[tuple[bool, str]]) -> dict:
    """Shares of the named / another / no object, over all such edits and over the failed ones."""
    def shares(outcomes: list[str]) -> dict:
        return {k: outcomes.count(k) / len(outcomes) if outcomes else float("nan") for k in ("named", "other", "none")}

    failed = [c for ok, c in chosen if not ok]
    return {"n": len(chosen), "all": shares([c for _, c in chosen]), "n_failed": len(failed), "failed": shares(failed)}


def _vague_style_shares(pipe, n: int, sampler: dict) -> tuple[dict[str, float], dict[str, float]]:
    """Where "turn it into a drawing" lands on N test photos: (exact pixels, blurred by metrics.STYLE_BLUR_SIGMA)."""
    rng = random.Random("vague")
    scenes = [world.scene_for(world.Edit("drawing", value="sketch"), rng, "test") for _ in range(n)]
    inputs = [world.render(s) for s in scenes]
    outs = ip2p_edit(pipe, inputs, "turn it into a drawing", seed=10_000, **sampler)
    cands = [{st: world.render(world.apply_edit(s, world.Edit(f"style_{st}"))) for st in world.DRAWING_STYLES}
             for s in scenes]
    return (metrics.style_shares(outs, cands, inputs=inputs),
            metrics.style_shares(outs, cands, inputs=inputs, blur=metrics.STYLE_BLUR_SIGMA))


def time_load_and_edit(name: str = "bundled") -> dict:
    t0 = time.time()
    pipe = models.load_ip2p(name)
    t1 = time.time()
    pair = heldout_pairs(1)[0]
    ip2p_edit(pipe, [pair.images()[0]], pair.instruction, seed=0)
    t2 = time.time()
    return {"load_s": round(t1 - t0, 2), "edit_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2),
            "threads": torch.get_num_threads()}


def evaluate_all(name: str, out: Path, which: tuple[str, ...] = ("clip", "vae", "t2i", "ip2p", "timing"),
                 clip_name: str | None = None) -> dict:
    """Run the selected gates on a bundle (``bundled`` or a folder holding clip/, sd/, ip2p/).

    ``out/results.json`` keeps the gates not selected this time (each entry records the UNet's training steps).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = models.BUNDLED_DIR if name == "bundled" else Path(name)
    clip, processor = models.load_clip(clip_name or str(root / "clip"))
    results: dict = {}
    if "clip" in which:
        results["clip"] = eval_clip(clip, processor)
    if "vae" in which or "t2i" in which:
        sd = models.load_sd(str(root / "sd"))
        if "vae" in which:
            results["vae"] = eval_vae(sd.vae)
        if "t2i" in which:
            results["t2i"] = eval_t2i(sd, clip, processor, grid_path=out / "t2i_samples.png")
    if "ip2p" in which:
        results["ip2p"] = eval_ip2p(models.load_ip2p(str(root / "ip2p")), grid_path=out / "ip2p_samples.png")
    if "timing" in which:
        results["timing"] = time_load_and_edit(str(root / "ip2p"))
    for gate, folder in models.UNET_FOLDER.items():
        if gate in results:
            results[gate]["unet_trained_steps"] = models.trained_steps(str(root / folder), folder)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    results = {**previous, **results}
    atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    return results
