"""The paired-edit world: procedurally drawn 64×64 scenes, their captions, and exact edits.

Every image the embedded default models see is drawn here, so the true result of every edit is
known: ``apply_edit(scene, edit)`` returns the after-scene, and ``render`` draws any scene. This is
what lets pairedit score edits against ground truth instead of only through CLIP proxies.

The world follows the categories of the InstructPix2Pix data (recolour, replace, add, remove,
resize, background / time of day, style or medium) and contains the deliberate ambiguity the VISII
paper argues for (its Fig. 6): the vague instruction "turn it into a drawing" answers to three
distinct styles, each of which also has an explicit name of its own. Compound instructions join a
style or background edit and an object edit in one sentence (``CompoundEdit``), as a VISII hybrid
instruction (learned edit + the user's words) does.

Splits are fixed by content, not by sampling order: a scene is held out when a stable hash of its
contents says so, and a fixed set of (edit type, target shape) combinations is held out too.
Nothing trains on either; every quality figure is measured on them.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import UserError

IMAGE_SIZE = 64
_SS = 4  # supersampling factor: draw at 256×256, box-filter down to 64×64 (anti-aliasing)

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon")
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 220),
    "purple": (140, 50, 190),
    "pink": (240, 120, 180),
}
SIZES = {"small": 7.0, "medium": 10.0, "large": 14.0}  # radius in pixels at 64×64
BACKGROUNDS = ("plain", "sky", "night", "sunset", "checker")
STYLES = ("photo", "sketch", "ink", "watercolor", "pixel", "grayscale", "sepia")
DRAWING_STYLES = ("sketch", "ink", "watercolor")  # all answer to the vague "turn it into a drawing"

_BG_PHRASE = {
    "plain": "on a plain background",
    "sky": "under a blue sky",
    "night": "at night",
    "sunset": "at sunset",
    "checker": "on a checkered background",
}
_STYLE_PREFIX = {
    "photo": "a photo of",
    "sketch": "a pencil sketch of",
    "ink": "an ink drawing of",
    "watercolor": "a watercolor painting of",
    "pixel": "pixel art of",
    "grayscale": "a black and white photo of",
    "sepia": "a sepia photo of",
}
PAPER = (245, 240, 225)


class WorldError(UserError, ValueError):
    """A world parameter is out of range (unknown shape, colour, edit, ...)."""


class EditNotApplicable(WorldError):
    """The edit cannot be applied to this scene (e.g. removing an object that is not there)."""


def _check(value: str, allowed, what: str) -> None:
    if value not in allowed:
        raise WorldError(f"unknown {what} {value!r}; known: {', '.join(allowed)}")


@dataclass(frozen=True)
class Obj:
    """One object: a shape of a colour and size, centred at (x, y) in [0, 1] image coordinates."""

    shape: str
    color: str
    size: str
    x: float
    y: float

    def __post_init__(self):
        _check(self.shape, SHAPES, "shape")
        _check(self.color, tuple(COLORS), "colour")
        _check(self.size, tuple(SIZES), "size")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise WorldError(f"object position ({self.x}, {self.y}) is outside [0, 1]")

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A background, 1–3 objects of distinct shapes (so "the circle" is never ambiguous), a style."""

    background: str
    objects: tuple[Obj, ...]
    style: str = "photo"

    def __post_init__(self):
        _check(self.background, BACKGROUNDS, "background")
        _check(self.style, STYLES, "style")
        if not 1 <= len(self.objects) <= 3:
            raise WorldError(f"a scene has 1-3 objects, got {len(self.objects)}")
        shapes = [o.shape for o in self.objects]
        if len(set(shapes)) != len(shapes):
            raise WorldError(f"object shapes must be distinct in a scene, got {shapes}")

    def find(self, shape: str) -> int:
        _check(shape, SHAPES, "shape")
        for i, o in enumerate(self.objects):
            if o.shape == shape:
                return i
        have = ", ".join(o.shape for o in self.objects)
        raise EditNotApplicable(f"the scene has no {shape} (it has: {have})")

    @property
    def caption(self) -> str:
        phrases = [f"a {o.phrase}" for o in self.objects]
        objs = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        return f"{_STYLE_PREFIX[self.style]} {objs} {_BG_PHRASE[self.background]}"

    @property
    def key(self) -> str:
        """A stable content hash; identical scenes have identical keys across runs and machines."""
        return hashlib.sha1(repr(self).encode()).hexdigest()[:16]

    @property
    def split(self) -> str:
        """'test' for the held-out tenth of all scenes (by content hash), else 'train'."""
        return "test" if int(self.key, 16) % 10 == 0 else "train"


# ----------------------------------------------------------------------------------------------
# Drawing


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ngon(n, rot, rad=r):
        return [(cx + rad * np.cos(rot + 2 * np.pi * k / n), cy + rad * np.sin(rot + 2 * np.pi * k / n)) for k in range(n)]

    if shape == "square":
        return ngon(4, np.pi / 4, r * 1.25)
    if shape == "triangle":
        return ngon(3, -np.pi / 2, r * 1.2)
    if shape == "diamond":
        return ngon(4, -np.pi / 2, r * 1.2)
    if shape == "hexagon":
        return ngon(6, 0.0, r * 1.1)
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r * 1.25 if k % 2 == 0 else r * 0.5
            a = -np.pi / 2 + np.pi * k / 5
            pts.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
        return pts
    if shape == "cross":
        a, b = r * 1.1, r * 0.4
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b), (cx + b, cy + b),
                (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b)]
    raise WorldError(f"no polygon for shape {shape!r}")


def _draw_object(draw: ImageDraw.ImageDraw, obj: Obj, fill) -> None:
    s = IMAGE_SIZE * _SS
    cx, cy, r = obj.x * s, obj.y * s, SIZES[obj.size] * _SS
    if obj.shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(obj.shape, cx, cy, r), fill=fill)


def _ring_hole(obj: Obj) -> list[float]:
    s = IMAGE_SIZE * _SS
    cx, cy, r = obj.x * s, obj.y * s, SIZES[obj.size] * _SS * 0.5
    return [cx - r, cy - r, cx + r, cy + r]


_STAR_FIELD = [(int(x), int(y)) for x, y in np.random.default_rng(7).integers(2, IMAGE_SIZE - 2, size=(14, 2))]


def _background(name: str) -> Image.Image:
    s = IMAGE_SIZE * _SS
    img = Image.new("RGB", (s, s))
    arr = np.zeros((s, s, 3), np.float32)
    yy = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    if name == "plain":
        arr[:] = (205, 205, 200)
    elif name == "sky":
        arr[:] = np.where(yy < 0.65, np.array([150, 200, 240]), np.array([110, 160, 80]))
    elif name == "night":
        arr[:] = (20, 25, 60)
        for x, y in _STAR_FIELD:
            arr[y * _SS:(y + 1) * _SS, x * _SS:(x + 1) * _SS] = (235, 235, 200)
    elif name == "sunset":
        top, bottom = np.array([250, 150, 60]), np.array([110, 50, 120])
        arr[:] = top * (1 - yy) + bottom * yy
    elif name == "checker":
        cell = 8 * _SS
        ii = (np.arange(s)[:, None] // cell + np.arange(s)[None, :] // cell) % 2
        arr[:] = np.where(ii[..., None] == 0, np.array([235, 235, 235]), np.array([150, 150, 150]))
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    return img


def _render_photo(scene: Scene) -> Image.Image:
    img = _background(scene.background)
    draw = ImageDraw.Draw(img)
    bg = _background(scene.background)
    for obj in scene.objects:
        _draw_object(draw, obj, COLORS[obj.color])
        if obj.shape == "ring":  # the hole shows the background through
            mask = Image.new("L", img.size, 0)
            ImageDraw.Draw(mask).ellipse(_ring_hole(obj), fill=255)
            img.paste(bg, (0, 0), mask)
    return img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)


def _edges(rgb: np.ndarray) -> np.ndarray:
    """Gradient magnitude in [0, 1]: the lines a drawing of the photo would have."""
    f = rgb.astype(np.float32) / 255.0
    gx = np.zeros_like(f)
    gy = np.zeros_like(f)
    gx[:, 1:-1] = f[:, 2:] - f[:, :-2]
    gy[1:-1, :] = f[2:, :] - f[:-2, :]
    return np.clip(np.sqrt(gx**2 + gy**2).max(axis=2) * 1.5, 0, 1)


def _stylize(photo: Image.Image, style: str) -> Image.Image:
    rgb = np.asarray(photo).astype(np.float32)
    paper = np.array(PAPER, np.float32)
    if style == "photo":
        return photo
    if style == "sketch":  # soft grey pencil lines on warm paper, no colour
        e = np.minimum(1.0, 1.6 * _edges(rgb))[..., None]
        out = paper * (1 - 0.8 * e)
    elif style == "ink":  # hard black outlines on white, no fill
        e = (_edges(rgb) > 0.25).astype(np.float32)[..., None]
        out = np.full_like(rgb, 255.0) * (1 - e)
    elif style == "watercolor":  # blurred, washed-out colour on paper with darker pooled edges
        blur = np.asarray(photo.filter(ImageFilter.GaussianBlur(1.6))).astype(np.float32)
        wash = 0.55 * blur + 0.45 * paper
        e = _edges(blur)[..., None]
        out = wash * (1 - 0.35 * e)
    elif style == "pixel":  # 4×4 blocks of a reduced palette
        small = photo.resize((IMAGE_SIZE // 4, IMAGE_SIZE // 4), Image.BOX)
        q = (np.asarray(small).astype(np.float32) // 64) * 64 + 32
        out = np.asarray(Image.fromarray(q.astype(np.uint8)).resize(photo.size, Image.NEAREST)).astype(np.float32)
    elif style == "grayscale":
        g = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        out = np.repeat(g[..., None], 3, axis=2)
    elif style == "sepia":
        g = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        out = g[..., None] * np.array([1.0, 0.85, 0.62], np.float32) + np.array([20, 10, 0], np.float32)
    else:
        raise WorldError(f"unknown style {style!r}")
    return Image.fromarray(out.clip(0, 255).round().astype(np.uint8))


def render(scene: Scene) -> Image.Image:
    """Draw a scene as a 64×64 RGB PIL image (deterministic)."""
    return _stylize(_render_photo(scene), scene.style)


def object_masks(scene: Scene) -> np.ndarray:
    """Boolean masks (n_objects, 64, 64) of the visible pixels of each object (later ones on top)."""
    s = IMAGE_SIZE * _SS
    labels = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(labels)
    for i, obj in enumerate(scene.objects):
        _draw_object(draw, obj, i + 1)
        if obj.shape == "ring":
            draw.ellipse(_ring_hole(obj), fill=0)  # approximation: the hole clears everything below
    lab = np.asarray(labels.resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST))
    return np.stack([lab == i + 1 for i in range(len(scene.objects))])


# ----------------------------------------------------------------------------------------------
# Edits


@dataclass(frozen=True)
class Edit:
    """An edit direction: a type from ``EDIT_TYPES`` plus its parameters.

    ``target`` is the shape of the object the edit acts on (object edits only); ``value`` is the
    edit's own parameter where its type has one (the new colour of a recolour to an unnamed colour
    is part of the type name, so ``value`` is used by ``add`` for "shape:colour" and by the vague
    drawing instruction for the style it happened to mean).
    """

    type: str
    target: str | None = None
    value: str | None = None

    def __post_init__(self):
        _check(self.type, tuple(EDIT_TYPES), "edit type")
        spec = EDIT_TYPES[self.type]
        if spec.needs_target and self.target is None:
            raise WorldError(f"edit {self.type!r} needs a target shape")
        if self.target is not None:
            _check(self.target, SHAPES, "shape")

    @property
    def category(self) -> str:
        return EDIT_TYPES[self.type].category

    @property
    def name(self) -> str:
        parts = [self.type] + [p for p in (self.target, self.value) if p]
        return "/".join(parts)

    def instruction(self, rng: random.Random | None = None, wording: int | None = None) -> str:
        """One of the edit's wordings: ``wording`` picks one, else ``rng`` draws one, else the first."""
        spec = EDIT_TYPES[self.type]
        if wording is None:
            wording = rng.randrange(len(spec.wordings)) if rng is not None else 0
        fields = {"target": self.target or ""}
        if self.type == "add":
            fields["shape"], fields["color"] = self.value.split(":")
        return spec.wordings[wording % len(spec.wordings)].format(**fields)


# How a compound instruction joins its two parts. The last one, a bare space, is how a VISII hybrid
# instruction reads: the learned tokens followed by the user's words (VISII §5 Hybrid).
COMPOUND_JOINERS = (" and ", ", ", " then ", " ")


@dataclass(frozen=True)
class CompoundEdit:
    """Two edits in one instruction: a scene-wide one (style or background) and one on the objects.

    "make it a watercolor painting and turn the circle into a star". The true after-scene applies both;
    they act on different parts of the scene, so the order of the words does not change it.
    InstructPix2Pix's generated instructions include such compounds; a model that never saw one cannot
    follow a VISII hybrid instruction (learned edit + words).
    """

    first: Edit
    second: Edit

    def __post_init__(self):
        wide = [e.category in SCENE_WIDE_CATEGORIES for e in (self.first, self.second)]
        if sum(wide) != 1 or "drawing" in (self.first.type, self.second.type):
            raise WorldError(f"a compound edit joins one explicit style or background edit and one object edit, "
                             f"not {self.first.name!r} and {self.second.name!r}")

    @property
    def category(self) -> str:
        return "compound"

    @property
    def name(self) -> str:
        return f"{self.first.name}+{self.second.name}"

    def instruction(self, rng: random.Random | None = None, wording: int | None = None) -> str:
        """Both parts' wordings joined: ``wording`` picks the parts' wordings and " and ", else ``rng`` draws."""
        join = rng.choice(COMPOUND_JOINERS) if wording is None and rng is not None else COMPOUND_JOINERS[0]
        return self.first.instruction(rng, wording) + join + self.second.instruction(rng, wording)

    def outcomes(self, scene: Scene) -> tuple[Scene, Scene, Scene]:
        """The after-scenes of both edits, of the first part alone and of the second alone: what an output
        that did both, or only one part, should look like."""
        return apply_edit(scene, self), apply_edit(scene, self.first), apply_edit(scene, self.second)


@dataclass(frozen=True)
class EditType:
    category: str
    wordings: tuple[str, ...]
    needs_target: bool = False
    _apply: object = field(default=None, repr=False, compare=False)


def _recolor(color):
    def apply(scene: Scene, edit: Edit) -> Scene:
        i = scene.find(edit.target)
        if scene.objects[i].color == color:
            raise EditNotApplicable(f"the {edit.target} is already {color}")
        return _set_obj(scene, i, color=color)

    return apply


def _replace_shape(shape):
    def apply(scene: Scene, edit: Edit) -> Scene:
        i = scene.find(edit.target)
        if any(o.shape == shape for o in scene.objects):
            raise EditNotApplicable(f"the scene already has a {shape}")
        return _set_obj(scene, i, shape=shape)

    return apply


def _set_obj(scene: Scene, i: int, **changes) -> Scene:
    objs = list(scene.objects)
    objs[i] = replace(objs[i], **changes)
    return replace(scene, objects=tuple(objs))


def _resize(step):
    order = tuple(SIZES)

    def apply(scene: Scene, edit: Edit) -> Scene:
        i = scene.find(edit.target)
        k = order.index(scene.objects[i].size) + step
        if not 0 <= k < len(order):
            word = "largest" if step > 0 else "smallest"
            raise EditNotApplicable(f"the {edit.target} already has the {word} size")
        return _set_obj(scene, i, size=order[k])

    return apply


def _remove(scene: Scene, edit: Edit) -> Scene:
    i = scene.find(edit.target)
    if len(scene.objects) == 1:
        raise EditNotApplicable(f"cannot remove the {edit.target}: it is the only object")
    return replace(scene, objects=scene.objects[:i] + scene.objects[i + 1:])


# Where an added object goes: the first of these slots far enough from every object in the scene.
_ADD_SLOTS = ((0.78, 0.22), (0.22, 0.22), (0.78, 0.78), (0.22, 0.78), (0.5, 0.2), (0.5, 0.8))


def _add(scene: Scene, edit: Edit) -> Scene:
    shape, color = (edit.value or ":").split(":")
    _check(shape, SHAPES, "shape")
    _check(color, tuple(COLORS), "colour")
    if len(scene.objects) >= 3:
        raise EditNotApplicable("cannot add an object: the scene already has 3")
    if any(o.shape == shape for o in scene.objects):
        raise EditNotApplicable(f"the scene already has a {shape}")
    for sx, sy in _ADD_SLOTS:
        if all(np.hypot(sx - o.x, sy - o.y) * IMAGE_SIZE > SIZES[o.size] + 11 for o in scene.objects):
            return replace(scene, objects=scene.objects + (Obj(shape, color, "small", sx, sy),))
    raise EditNotApplicable("cannot add an object: no free place in the scene")


def _background_to(name):
    def apply(scene: Scene, edit: Edit) -> Scene:
        if scene.background == name:
            raise EditNotApplicable(f"the background is already {name}")
        return replace(scene, background=name)

    return apply


def _style_to(name):
    def apply(scene: Scene, edit: Edit) -> Scene:
        if scene.style != "photo":
            raise EditNotApplicable(f"style edits apply to photos; this scene is already {scene.style}")
        return replace(scene, style=name)

    return apply


def _vague_drawing(scene: Scene, edit: Edit) -> Scene:
    if edit.value not in DRAWING_STYLES:
        raise WorldError(f"the vague drawing edit needs value in {DRAWING_STYLES}, got {edit.value!r}")
    return _style_to(edit.value)(scene, edit)


def _build_edit_types() -> dict[str, EditType]:
    t: dict[str, EditType] = {}
    for c in COLORS:
        t[f"recolor_{c}"] = EditType("recolor", (
            f"make the {{target}} {c}", f"turn the {{target}} {c}", f"paint the {{target}} {c}",
            f"change the color of the {{target}} to {c}"), True, _recolor(c))
    for s in SHAPES:
        t[f"replace_{s}"] = EditType("replace", (
            f"turn the {{target}} into a {s}", f"replace the {{target}} with a {s}", f"make the {{target}} a {s}",
            f"change the {{target}} to a {s}"), True, _replace_shape(s))
    t["add"] = EditType("add", ("add a {color} {shape}", "put a {color} {shape} in the picture",
                                "insert a {color} {shape}"), False, _add)
    t["remove"] = EditType("remove", ("remove the {target}", "delete the {target}", "take away the {target}",
                                      "get rid of the {target}"), True, _remove)
    t["enlarge"] = EditType("resize", ("make the {target} bigger", "enlarge the {target}", "make the {target} larger"),
                            True, _resize(+1))
    t["shrink"] = EditType("resize", ("make the {target} smaller", "shrink the {target}", "make the {target} tiny"),
                           True, _resize(-1))
    bg_words = {
        "plain": ("make the background plain", "put it on a plain background", "remove the background"),
        "sky": ("make it daytime", "put it under a blue sky", "change the background to a sky"),
        "night": ("make it night", "turn it into night", "change the background to a night sky"),
        "sunset": ("make it sunset", "turn it into a sunset", "change the time to sunset"),
        "checker": ("make the background checkered", "put it on a checkerboard",
                    "change the background to a checker pattern"),
    }
    for b, words in bg_words.items():
        t[f"background_{b}"] = EditType("background", words, False, _background_to(b))
    style_words = {
        "sketch": ("make it a pencil sketch", "turn it into a pencil sketch", "draw it as a pencil sketch"),
        "ink": ("make it an ink drawing", "turn it into an ink drawing", "draw it in ink"),
        "watercolor": ("make it a watercolor painting", "turn it into a watercolor", "paint it in watercolor"),
        "pixel": ("make it pixel art", "turn it into pixel art", "make it look like a pixel game"),
        "grayscale": ("make it black and white", "turn it into a black and white photo", "remove the colors"),
        "sepia": ("make it sepia", "make it look like an old photo", "turn it into a sepia photo"),
    }
    for s, words in style_words.items():
        t[f"style_{s}"] = EditType("style", words, False, _style_to(s))
    # The deliberately ambiguous instruction (VISII Fig. 6): one wording, three true results.
    t["drawing"] = EditType("style", ("turn it into a drawing", "make it a drawing", "make it look drawn"),
                            False, _vague_drawing)
    return t


EDIT_TYPES: dict[str, EditType] = _build_edit_types()
CATEGORIES = ("recolor", "replace", "add", "remove", "resize", "background", "style")
TARGETED_CATEGORIES = ("recolor", "replace", "remove", "resize")  # the edits that name an object ("the circle")


SCENE_WIDE_CATEGORIES = ("background", "style")  # the edits that act on the whole picture


def apply_edit(scene: Scene, edit: Edit | CompoundEdit) -> Scene:
    """The exact after-scene of ``edit`` on ``scene``; raises EditNotApplicable with the reason."""
    if isinstance(edit, CompoundEdit):
        return apply_edit(apply_edit(scene, edit.first), edit.second)
    return EDIT_TYPES[edit.type]._apply(scene, edit)


def is_applicable(scene: Scene, edit: Edit) -> bool:
    try:
        apply_edit(scene, edit)
    except EditNotApplicable:
        return False
    return True


# Held-out (edit type, target shape) combinations: a fixed ~1/7 of the object-edit combinations.
def is_heldout_combo(edit: Edit) -> bool:
    """True for the (edit type, target shape) combinations that no model trains on."""
    if edit.target is None:
        return False
    names = sorted(EDIT_TYPES)
    return (names.index(edit.type) * 3 + SHAPES.index(edit.target)) % 7 == 0


# ----------------------------------------------------------------------------------------------
# Sampling


def random_scene(rng: random.Random, split: str = "train", n_objects: int | None = None,
                 style: str | None = None, shapes: tuple[str, ...] | None = None) -> Scene:
    """A random scene from ``split`` ('train', 'test' or 'any'); objects never overlap much."""
    if split not in ("train", "test", "any"):
        raise WorldError(f"unknown split {split!r}; known: train, test, any")
    for _ in range(1000):
        n = n_objects or rng.choice((1, 1, 2, 2, 3))
        kinds = list(shapes) if shapes else rng.sample(SHAPES, n)
        objs: list[Obj] = []
        for shape in kinds[:n]:
            for _ in range(50):
                size = rng.choice(tuple(SIZES))
                r = SIZES[size] / IMAGE_SIZE
                x, y = rng.uniform(r + 0.06, 1 - r - 0.06), rng.uniform(r + 0.06, 1 - r - 0.06)
                if all(np.hypot(x - o.x, y - o.y) > r + SIZES[o.size] / IMAGE_SIZE + 0.03 for o in objs):
                    objs.append(Obj(shape, rng.choice(tuple(COLORS)), size, round(x, 3), round(y, 3)))
                    break
        if len(objs) != len(kinds[:n]):
            continue
        st = style or ("photo" if rng.random() < 0.85 else rng.choice(STYLES[1:]))
        scene = Scene(rng.choice(BACKGROUNDS), tuple(objs), st)
        if split == "any" or scene.split == split:
            return scene
    raise WorldError("could not sample a scene with these constraints")


def replaces_with_itself(edit_type: str, target: str | None) -> bool:
    """``replace_X`` aimed at an X: not an edit (the after-image would equal the before-image)."""
    return edit_type.startswith("replace_") and target == edit_type.removeprefix("replace_")


def random_edit(rng: random.Random, split: str = "train", types: tuple[str, ...] | None = None) -> Edit:
    """An edit direction: a category drawn uniformly, then a type in it, with its parameters."""
    if types:
        choices = list(types)
    else:
        category = rng.choice(CATEGORIES)
        choices = [t for t, spec in EDIT_TYPES.items() if spec.category == category]
    for _ in range(1000):
        et = rng.choice(choices)
        spec = EDIT_TYPES[et]
        target = rng.choice(SHAPES) if spec.needs_target else None
        if replaces_with_itself(et, target):
            continue
        value = None
        if et == "add":
            value = f"{rng.choice(SHAPES)}:{rng.choice(tuple(COLORS))}"
        elif et == "drawing":
            value = rng.choice(DRAWING_STYLES)
        edit = Edit(et, target, value)
        if split == "any" or is_heldout_combo(edit) == (split == "test") or edit.target is None:
            return edit
    raise WorldError("could not sample an edit")


@dataclass(frozen=True)
class Pair:
    """A before → after example with its captions and the instruction that was used."""

    before: Scene
    after: Scene
    edit: Edit | CompoundEdit
    instruction: str

    def images(self) -> tuple[Image.Image, Image.Image]:
        return render(self.before), render(self.after)


def scene_for(edit: Edit, rng: random.Random, split: str = "train",
              n_objects: tuple[int, ...] = (1, 1, 2, 2, 3)) -> Scene:
    """A random scene of ``split`` to which ``edit`` applies visibly, with a number of objects from ``n_objects``."""
    if not n_objects or not all(1 <= n <= 3 for n in n_objects):
        raise WorldError(f"scenes hold 1 to 3 objects, not {n_objects}")
    for _ in range(2000):
        n = rng.choice(n_objects)
        others = [s for s in SHAPES if s != edit.target]
        if edit.type.startswith("replace_"):
            others = [s for s in others if s != edit.type.removeprefix("replace_")]
        if edit.type == "add":
            others = [s for s in others if s != edit.value.split(":")[0]]
            n = min(n, 2)
        if edit.type == "remove":
            n = max(n, 2)
        shapes = ([edit.target] if edit.target else []) + rng.sample(others, n - (1 if edit.target else 0))
        rng.shuffle(shapes)
        style = "photo" if edit.category == "style" else None
        try:
            scene = random_scene(rng, split, n_objects=n, style=style, shapes=tuple(shapes))
        except WorldError:
            continue
        if is_applicable(scene, edit) and changes_image(scene, apply_edit(scene, edit)):
            return scene
    raise WorldError(f"could not find a {split} scene for edit {edit.name}")


def changes_image(before: Scene, after: Scene, min_pixels: int = 16) -> bool:
    """True when the edit is visible: at least ``min_pixels`` pixels differ by more than 8/255.

    Some edits change the scene but not its picture (recolouring an object in an ink drawing, which
    has no fill); such pairs would make "closer to the true after than the input" impossible.
    """
    a = np.asarray(render(before), np.int16)
    b = np.asarray(render(after), np.int16)
    return int((np.abs(a - b).max(axis=2) > 8).sum()) >= min_pixels


def make_pair(edit: Edit, rng: random.Random, split: str = "train", scene: Scene | None = None) -> Pair:
    scene = scene or scene_for(edit, rng, split)
    return Pair(scene, apply_edit(scene, edit), edit, edit.instruction(rng))


def random_pair(rng: random.Random, split: str = "train") -> Pair:
    """A training (or held-out) example: edit type uniform, then an applicable scene of the split."""
    return make_pair(random_edit(rng, split), rng, split)


def binding_pair(rng: random.Random, split: str = "train") -> Pair:
    """An edit that names one object of a scene holding two or three ("make the circle red" beside a square).

    The model has to find the named object among others (bind the word to it): the edits that fail most
    often (docs/models.md). Category drawn uniformly among the object-naming ones, as ``random_edit`` does.
    """
    edit = _random_edit_in(rng, split, TARGETED_CATEGORIES)
    return make_pair(edit, rng, split, scene_for(edit, rng, split, n_objects=(2, 3)))


def binding_twins(rng: random.Random, split: str = "train") -> tuple[Pair, Pair]:
    """Two edits of one busy scene that differ only in the object they name ("make the circle red" and "make
    the square red", worded alike): a counterfactual pair, which only a model that reads the shape word can
    fit both of (a ``binding_pair`` may also be fitted by editing, say, the most salient object)."""
    for _ in range(1000):
        edit = _random_edit_in(rng, split, TARGETED_CATEGORIES)
        scene = scene_for(edit, rng, split, n_objects=(2, 3))
        after = apply_edit(scene, edit)
        others = [o.shape for o in scene.objects if o.shape != edit.target]
        rng.shuffle(others)
        for shape in others:
            twin = Edit(edit.type, shape, edit.value)
            if replaces_with_itself(twin.type, shape) or is_heldout_combo(twin) != (split == "test"):
                continue
            try:
                twin_after = apply_edit(scene, twin)
            except EditNotApplicable:
                continue
            if changes_image(scene, twin_after) and changes_image(after, twin_after):
                wording = rng.randrange(len(EDIT_TYPES[edit.type].wordings))
                return (Pair(scene, after, edit, edit.instruction(wording=wording)),
                        Pair(scene, twin_after, twin, twin.instruction(wording=wording)))
    raise WorldError(f"could not sample binding twins for the {split} split")


def shape_twins(rng: random.Random, n: int, split: str = "train") -> list[tuple[Scene, Scene]]:
    """``n`` random scenes of ``split``, each with a ``shape_twin`` in the same split (scenes without one are skipped)."""
    out = []
    while len(out) < n:
        scene = random_scene(rng, split)
        try:
            out.append((scene, shape_twin(scene, rng, split)))
        except WorldError:  # none of its twins lies in the split
            continue
    return out


def absent_pair(rng: random.Random, split: str = "train") -> Pair:
    """An object edit that names a shape the scene does not hold ("remove the hexagon" beside a circle and a
    square), with the scene unchanged as its after-image: what a model should do when the named object is not
    there. A model never shown this edits some object anyway, so on one example pair VISII's MSE term can prefer
    a wrong, absent shape word to the true one (docs/visii.md, session 30)."""
    for _ in range(1000):
        edit = _random_edit_in(rng, split, TARGETED_CATEGORIES)
        n = rng.choice((1, 1, 2, 2, 3))
        shapes = tuple(rng.sample([s for s in SHAPES if s != edit.target], n))
        try:
            scene = random_scene(rng, split, n_objects=n, shapes=shapes)
        except WorldError:
            continue
        return Pair(scene, scene, edit, edit.instruction(rng))
    raise WorldError(f"could not sample an absent-object pair for the {split} split")


def shape_twin(scene: Scene, rng: random.Random, split: str = "train") -> Scene:
    """The scene with one object's shape changed to a shape it does not hold, everything else equal: a hard
    negative for contrastive training (NegCLIP, Yuksekgonul et al. 2023), whose caption differs in one word.
    Raises ``WorldError`` when no such twin lies in ``split``."""
    twins = [_set_obj(scene, i, shape=shape) for i in range(len(scene.objects))
             for shape in SHAPES if all(o.shape != shape for o in scene.objects)]
    twins = [t for t in twins if split == "any" or t.split == split]
    if not twins:
        raise WorldError(f"no shape twin of this scene lies in the {split} split")
    return rng.choice(twins)


def compound_pair(rng: random.Random, split: str = "train") -> Pair:
    """A scene-wide edit and an object edit in one instruction (``CompoundEdit``), in either order.

    Each part's category is drawn uniformly (style or background; recolour, replace, add, remove or resize),
    and both parts must change the picture, so the true after-image shows two edits.
    """
    for _ in range(1000):
        wide = _random_edit_in(rng, split, SCENE_WIDE_CATEGORIES, exclude=("drawing",))
        obj = _random_edit_in(rng, split, tuple(c for c in CATEGORIES if c not in SCENE_WIDE_CATEGORIES))
        edit = CompoundEdit(wide, obj) if rng.random() < 0.5 else CompoundEdit(obj, wide)
        scene = scene_for(obj, rng, split)
        if not is_applicable(scene, wide):
            continue
        after = apply_edit(scene, edit)
        if changes_image(apply_edit(scene, wide), after) and changes_image(apply_edit(scene, obj), after):
            return Pair(scene, after, edit, edit.instruction(rng))
    raise WorldError(f"could not sample a compound edit for the {split} split")


def _random_edit_in(rng: random.Random, split: str, categories: tuple[str, ...], exclude: tuple[str, ...] = ()) -> Edit:
    """``random_edit`` with its category drawn uniformly from ``categories``."""
    category = rng.choice(categories)
    return random_edit(rng, split, types=tuple(t for t, s in EDIT_TYPES.items()
                                               if s.category == category and t not in exclude))


def direction_pairs(edit: Edit, n: int, seed: int, split: str = "test") -> list[Pair]:
    """``n`` pairs of one edit direction on different scenes (for multi-pair learning and testing)."""
    rng = random.Random(f"{seed}:{edit.name}")
    pairs, seen = [], set()
    while len(pairs) < n:
        p = make_pair(edit, rng, split)
        if p.before.key not in seen:
            seen.add(p.before.key)
            pairs.append(p)
    return pairs


def training_instructions() -> list[str]:
    """Every wording of every edit that models train on (held-out combinations left out), sorted.

    The counterpart of the instructions of a real checkpoint's training set: a held-out direction's own
    wordings are not in it when its (edit, shape) combination is held out.
    """
    return _wordings(heldout=False)


def all_instructions() -> list[str]:
    """Every wording of every edit the world has, held-out (edit, shape) combinations included, sorted.

    The instructions a user of the world could type, for VISII's ``init="bank"``; unlike
    ``training_instructions`` it holds the wordings of edits no model trained on.
    """
    return _wordings(heldout=True)


def _wordings(heldout: bool) -> list[str]:
    out = set()
    for et, spec in EDIT_TYPES.items():
        values = [f"{s}:{c}" for s in SHAPES for c in COLORS] if et == "add" else [None]
        for target in SHAPES if spec.needs_target else (None,):
            for value in values:
                if replaces_with_itself(et, target):
                    continue
                edit = Edit(et, target, value)
                if heldout or not is_heldout_combo(edit):
                    out.update(edit.instruction(wording=k) for k in range(len(spec.wordings)))
    return sorted(out)


def corpus() -> list[str]:
    """Every kind of text the world can print (captions and instructions), for the tokenizer."""
    rng = random.Random(0)
    lines = [EDIT_TYPES[t].wordings[k] for t in EDIT_TYPES for k in range(len(EDIT_TYPES[t].wordings))]
    lines = [w.format(target=s, shape=s, color=c) for w in lines for s in SHAPES for c in list(COLORS)[:2]]
    lines += [random_scene(rng, "any").caption for _ in range(3000)]
    lines += [f"{_STYLE_PREFIX[s]} a {z} {c} {sh} {_BG_PHRASE[b]}" for s in STYLES for z in SIZES
              for c in COLORS for sh in SHAPES for b in BACKGROUNDS][::7]
    return lines
