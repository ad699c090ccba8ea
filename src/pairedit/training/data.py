"""Training data drawn from the world, rendered once and cached as .npz (uint8 pixels, text).

Only the training split is ever drawn here (held-out scenes and held-out (edit, object)
combinations are rejected by ``pairedit.world``), so every quality figure measured on the test
split is on data no model has seen.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import world
from ..errors import UserError

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def scenes_dataset(path: Path, n: int, seed: int) -> dict:
    """``n`` training scenes: pixels (n, 64, 64, 3) uint8 and captions (a list of str)."""
    path = Path(path)
    if path.exists():
        data = np.load(path, allow_pickle=False)
        return {"pixels": data["pixels"], "captions": json.loads(str(data["captions"]))}
    rng = random.Random(f"scenes:{seed}")
    pixels = np.zeros((n, world.IMAGE_SIZE, world.IMAGE_SIZE, 3), np.uint8)
    captions = []
    for i in tqdm(range(n), desc="rendering scenes", mininterval=5):
        scene = world.random_scene(rng, "train")
        pixels[i] = np.asarray(world.render(scene))
        captions.append(scene.caption)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, pixels=pixels, captions=np.array(json.dumps(captions)))
    return {"pixels": pixels, "captions": captions}


# The kinds of training pair a file can hold, each drawn from a random stream of its own (a draw may give
# several pairs: binding twins come two at a time, one after the other in the file).
PAIR_KINDS = {"usual": ("pairs", world.random_pair), "binding": ("binding", world.binding_pair),
              "compound": ("compound", world.compound_pair), "twins": ("twins", world.binding_twins),
              "absent": ("absent", world.absent_pair)}


def pairs_dataset(path: Path, n: int, seed: int, part: int = 0, pixels: bool = True, kind: str = "usual") -> dict:
    """``n`` training edit pairs: before/after pixels, after captions and the edits (to word at batch time).

    ``part`` numbers the files of a larger pool (each drawn from its own random stream), so adding files
    never changes the pairs already drawn. ``pixels=False`` skips reading the 1.5 GB of before/after pixels
    from an existing file (a trainer whose latents are cached needs only the edits). ``kind`` is "usual"
    (``world.random_pair``), "binding" (edits that name one object of a busy scene, ``world.binding_pair``),
    "compound" (a scene-wide and an object edit in one instruction, ``world.compound_pair``), "twins" (two
    edits of one busy scene naming different objects, ``world.binding_twins``) or "absent" (an object edit
    naming a shape the scene lacks, the scene unchanged, ``world.absent_pair``).
    """
    path = Path(path)
    if path.exists():
        data = np.load(path, allow_pickle=False)
        edits = [edit_from_record(e) for e in json.loads(str(data["edits"]))]
        if len(edits) < n:
            raise UserError(f"{path} holds {len(edits)} pairs, fewer than the {n} asked for; delete it (and its "
                            f"latents) to draw it again")
        out = {"edits": edits[:n], "after_captions": json.loads(str(data["after_captions"]))[:n]}
        return {"before": data["before"][:n], "after": data["after"][:n], **out} if pixels else out
    stream = _pair_stream(kind, seed, part)
    size = world.IMAGE_SIZE
    before = np.zeros((n, size, size, 3), np.uint8)
    after = np.zeros((n, size, size, 3), np.uint8)
    edits, captions = [], []
    for i in tqdm(range(n), desc=f"rendering {kind} pairs", mininterval=5):
        pair = next(stream)
        b, a = pair.images()
        before[i], after[i] = np.asarray(b), np.asarray(a)
        edits.append(pair.edit)
        captions.append(pair.after.caption)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, before=before, after=after, after_captions=np.array(json.dumps(captions)),
             edits=np.array(json.dumps([edit_record(e) for e in edits])))
    return {"before": before, "after": after, "edits": edits, "after_captions": captions}


def _pair_stream(kind: str, seed: int, part: int) -> Iterator[world.Pair]:
    """The pairs of one pair file, in order, drawn from the file's own random stream."""
    stream, draw = PAIR_KINDS[kind]
    rng = random.Random(f"{stream}:{seed}" if part == 0 else f"{stream}:{seed}:part{part}")
    while True:
        drawn = draw(rng, "train")
        yield from (drawn if isinstance(drawn, tuple) else (drawn,))


def object_pixels(path: Path, n: int, seed: int, part: int = 0, kind: str = "usual") -> np.ndarray:
    """(n, 64, 64) bool: the pixels covered by any object of each pair's before- or after-scene, grown by one pixel
    (anti-aliased edges belong to the object), for the first ``n`` pairs of the file ``pairs_dataset`` wrote at
    ``path``. The files keep images and edits, not scenes, so the scenes are drawn again from the file's random
    stream (as slow as drawing the pairs was) and checked against the stored edits."""
    stored = pairs_dataset(path, n, seed, part, pixels=False, kind=kind)["edits"]
    stream = _pair_stream(kind, seed, part)
    out = np.zeros((n, world.IMAGE_SIZE, world.IMAGE_SIZE), bool)
    for i in tqdm(range(n), desc=f"object masks of {kind} pairs", mininterval=5):
        pair = next(stream)
        if pair.edit != stored[i]:
            raise UserError(f"{path}: pair {i} was drawn by another version of the world; delete the file (and its "
                            f"latents) to draw it again")
        for scene in (pair.before, pair.after):
            if scene.objects:
                out[i] |= world.object_masks(scene).any(axis=0)
    padded, size = np.pad(out, ((0, 0), (1, 1), (1, 1))), world.IMAGE_SIZE  # grow by one pixel (3×3 dilation)
    return np.any([padded[:, dy:dy + size, dx:dx + size] for dy in range(3) for dx in range(3)], axis=0)


def edit_record(edit: world.Edit | world.CompoundEdit) -> list:
    """JSON form of an edit: [type, target, value], or a list of two of those for a compound edit."""
    if isinstance(edit, world.CompoundEdit):
        return [edit_record(edit.first), edit_record(edit.second)]
    return [edit.type, edit.target, edit.value]


def edit_from_record(record: list) -> world.Edit | world.CompoundEdit:
    """The edit an ``edit_record`` describes (files written before compound edits existed read the same)."""
    if isinstance(record[0], list):
        return world.CompoundEdit(*(world.Edit(*r) for r in record))
    return world.Edit(*record)


def to_unit(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_clip_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) → CLIP-normalised input, what CLIPProcessor gives at the model's own size."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    return (x - CLIP_MEAN) / CLIP_STD


def partial_caption(caption: str, rng: random.Random) -> str:
    """A caption with some parts dropped (keeps at least one object), so short texts mean something."""
    for prefix in sorted(world._STYLE_PREFIX.values(), key=len, reverse=True):
        if caption.startswith(prefix + " "):
            style, rest = prefix, caption[len(prefix) + 1:]
            break
    else:
        return caption
    bg = next((p for p in world._BG_PHRASE.values() if rest.endswith(" " + p)), "")
    objs = rest[: len(rest) - len(bg)].strip().replace(" and ", ", ").split(", ")
    keep = [o for o in objs if rng.random() < 0.6] or [rng.choice(objs)]
    parts = ([style] if rng.random() < 0.5 else []) + [" and ".join(keep)] + ([bg] if bg and rng.random() < 0.5 else [])
    return " ".join(parts)
