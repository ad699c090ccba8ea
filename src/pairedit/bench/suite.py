"""What a benchmark run measures: its sizes (``Suite``), its edit directions, and the plan of work units.

Nothing here loads a model: ``make_plan`` checks every name in a config (methods, edit kinds) and
draws the directions, so a bad config fails before any work starts.
"""

from __future__ import annotations

import fnmatch
import hashlib
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .. import world
from ..errors import UserError
from .methods import METHODS, Method

# Direction kinds: the world's edit categories, with the vague "turn it into a drawing" split off
# from "style" as its own kind (VISII Fig. 6: one wording, three true results; scored by style accuracy).
KINDS = (*world.CATEGORIES, "drawing")


@dataclass(frozen=True)
class Suite:
    """Sizes of a run. VISII §4.3 used 300 directions / 1030 pairs and §5 100 directions / 400 pairs,
    with N = 1000 learning steps (§4.1); these are scaled to a 2-core CPU, see ``SUITES``."""

    name: str
    directions: int  # edit directions, round-robin over the kinds
    tests: int  # test images per direction
    pairs: int = 4  # example pairs per direction (VISII rows use the first 1–4; Table 1 goes to 4)
    visii_steps: int = 1000  # VISII learning steps N (§4.1: 1000)
    caption_steps: int = 500  # PEZ steps of the caption initialisation (VisiiConfig default)
    sample_steps: int = 20  # InstructPix2Pix / VISII sampling steps (EditConfig default)
    sdedit_steps: int = 50  # SDEdit DDIM steps of the full schedule (SDEditConfig default)
    pti_steps: int = 50  # PTI DDIM steps (PTI §4.1)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "name" and (not isinstance(value, int) or value < (0 if f.name == "visii_steps" else 1)):
                raise UserError(f"suite {self.name!r}: {f.name} must be a positive whole number, got {value!r}")
        if self.pairs > 4:
            raise UserError(f"suite {self.name!r}: at most 4 example pairs per direction (VISII Table 1), got {self.pairs}")


# Sizes chosen by measurement with bundled-size models (6.7 M-param UNet, 16×16 latents, 128-wide CLIP;
# random weights — cost does not depend on them) on this 2-core CPU, one thread, while two training jobs
# and other tests ran beside it (load average ≈ 5.5). Per unit, measured in the quick run: a VISII learning
# step 0.107 s (0.052 s at load ≈ 3), 100 PEZ steps 1.6 s, an InstructPix2Pix / VISII edit at 10 steps
# 1.05 s, SDEdit at 25 × 0.75 steps 1.5 s, PTI at 20 steps 6.4 s, scoring one edit 0.02 s.
# - quick: one direction of each of the 8 kinds × 1 test image, every method (144 units), 40 learning
#   steps (7 learnings per direction), 10 sampling steps: measured 8 min 36 s end to end in one process
#   under that load (499 s of units).
# - full: 2 directions per kind × 3 test images (48 test pairs + 64 example pairs), 500 learning steps (the
#   `pairedit demo` budget; the paper's 1000 would double the learning time), the methods' default step
#   counts. Measured in eval_visii with one thread while the other core trained (load ≈ 2): a 1000-step
#   learning with its 500-step caption and 6 edits ≈ 46 s, so ≈ 270 s per direction (7 learnings ≈ 120 s,
#   3 test images × 16 edits + PTI ≈ 150 s): ≈ 75 min in one process, about half with two. Directions
#   depend only on (seed, index), so a larger `--directions` reuses every cached unit of this one.
SUITES: dict[str, Suite] = {
    "quick": Suite("quick", directions=8, tests=1, visii_steps=40, caption_steps=100, sample_steps=10, sdedit_steps=25,
                   pti_steps=20),
    "full": Suite("full", directions=16, tests=3, visii_steps=500, caption_steps=300),
}


def get_suite(name: str, **overrides: int | None) -> Suite:
    """The named suite, with any non-None size overridden (the report records the sizes used)."""
    if name not in SUITES:
        raise UserError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(SUITES[name], **given) if given else SUITES[name]


def select_methods(names: list[str] | None) -> list[Method]:
    """Methods by name, in registry order; shell-style patterns (``visii-*-1p-*``) allowed.

    Raises UserError naming every entry that matches no method, before any work starts.
    """
    if names is None:
        return list(METHODS.values())
    chosen: set[str] = set()
    unknown = []
    for entry in names:
        hits = [m for m in METHODS if fnmatch.fnmatchcase(m, entry)]
        if not hits:
            unknown.append(entry)
        chosen.update(hits)
    if unknown:
        raise UserError(f"unknown benchmark method(s) {', '.join(map(repr, unknown))}; known: {', '.join(METHODS)} "
                        "(`pairedit bench --list-methods` describes them)")
    if not chosen:
        raise UserError("no benchmark methods selected")
    return [m for name, m in METHODS.items() if name in chosen]


def select_edits(names: list[str] | None) -> list[tuple[str, ...]]:
    """Each entry as the tuple of edit types a direction may draw from: a kind (``recolor``,
    ``drawing``, ...) or one edit type (``recolor_red``). Unknown names fail, naming them."""
    if names is None:
        names = list(KINDS)
    groups, unknown = [], []
    for name in names:
        if name in KINDS:
            groups.append(kind_types(name))
        elif name in world.EDIT_TYPES:
            groups.append((name,))
        else:
            unknown.append(name)
    if unknown:
        raise UserError(f"unknown edit(s) {', '.join(map(repr, unknown))}; give kinds ({', '.join(KINDS)}) "
                        f"or edit types ({', '.join(world.EDIT_TYPES)})")
    return groups


def kind_types(kind: str) -> tuple[str, ...]:
    """The edit types of a direction kind ("style" excludes the vague "drawing", its own kind)."""
    if kind == "drawing":
        return ("drawing",)
    return tuple(t for t, spec in world.EDIT_TYPES.items() if spec.category == kind and t != "drawing")


def kind_of(edit: world.Edit) -> str:
    return "drawing" if edit.type == "drawing" else edit.category


def stable_int(text: str) -> int:
    """A seed from a string, identical on every machine and process (``hash()`` is salted per process)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


@dataclass(frozen=True)
class Direction:
    """One edit direction of the held-out split: its example pairs and its test pairs."""

    index: int
    edit: world.Edit
    examples: tuple[world.Pair, ...]
    tests: tuple[world.Pair, ...]

    @property
    def id(self) -> str:
        """A readable, file-name-safe id, unique within a plan: ``d003-recolor_red-circle``."""
        return f"d{self.index:03d}-" + self.edit.name.replace("/", "-").replace(":", "-")

    @property
    def kind(self) -> str:
        return kind_of(self.edit)

    @property
    def instruction(self) -> str:
        """The true instruction (first wording): what InstructPix2Pix and VISII's GT init are given."""
        return self.edit.instruction(wording=0)

    @property
    def target_style(self) -> str | None:
        """The drawing style the examples show, when the direction is a drawing-style one (else None).

        Only style edits count: an object edit on a scene that is already drawn (an example "add a
        triangle" on a watercolour) keeps that style but does not ask for it.
        """
        style = self.examples[0].after.style
        return style if self.edit.category == "style" and style in world.DRAWING_STYLES else None

    @property
    def key(self) -> str:
        """Content hash of the edit and of every example and test scene."""
        parts = [self.edit.name] + [p.before.key for p in self.examples] + [p.before.key for p in self.tests]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def make_directions(suite: Suite, seed: int, edits: list[tuple[str, ...]]) -> list[Direction]:
    """``suite.directions`` directions, round-robin over ``edits`` (a group of edit types each).

    Direction i depends only on (seed, i, its group), so a larger suite starts with a smaller one's
    directions and their cached results are reused. An edit already drawn is drawn again up to 50
    times to find a new one (the vague drawing kind has only 3); a repeat keeps its own scenes.
    """
    out, seen = [], set()
    for i in range(suite.directions):
        group = edits[i % len(edits)]
        rng = random.Random(f"bench-direction:{seed}:{i}")
        for _ in range(50):
            edit = world.random_edit(rng, "test", types=group)
            if edit.name not in seen:
                break
        seen.add(edit.name)
        pairs = world.direction_pairs(edit, suite.pairs + suite.tests, seed=stable_int(f"{seed}:{i}"), split="test")
        out.append(Direction(i, edit, tuple(pairs[:suite.pairs]), tuple(pairs[suite.pairs:])))
    return out


@dataclass
class BenchConfig:
    """Everything a run needs; ``make_plan`` checks it before any model is loaded."""

    suite: Suite
    out: Path = Path("docs")  # benchmark.md and benchmark/ (figures, results.json) go here
    cache: Path = Path(".pairedit-bench-cache")  # per-unit records, outputs, learned instructions
    model: str = "bundled"  # InstructPix2Pix: 'bundled', a folder (or a bundle folder with ip2p/ sd/ clip/), a hub id
    sd_model: str | None = "auto"  # text-to-image model for SDEdit/PTI; 'auto' finds the bundle's, None = none
    clip: str | None = None  # None: the bundle's CLIP, else openai/clip-vit-large-patch14
    methods: list[str] | None = None  # names or patterns; None = all
    edits: list[str] | None = None  # kinds or edit types; None = all kinds
    seed: int = 0
    device: str = "cpu"
    command: str = ""  # the exact command line, for the report
    extra: dict = field(default_factory=dict)


@dataclass
class Unit:
    """One work unit: a method applied to one test image of one direction."""

    method: Method
    direction: Direction
    test: int


@dataclass
class Plan:
    config: BenchConfig
    methods: list[Method]
    directions: list[Direction]
    skipped: dict[str, str]  # method name → why it is not run (e.g. no text-to-image model)

    @property
    def suite(self) -> Suite:
        return self.config.suite

    def units(self, directions: list[Direction] | None = None) -> list[Unit]:
        """Work units, direction by direction; within one, VISII's random/fixed rows are adjacent."""
        return [Unit(m, d, t) for d in (directions if directions is not None else self.directions)
                for m in self.methods for t in range(len(d.tests))]


def make_plan(config: BenchConfig, sd_available: bool = True) -> Plan:
    """Check names and draw directions. Methods needing a text-to-image model are skipped (and the
    report says so) when none is available, unless they were asked for by name: then it fails."""
    methods = select_methods(config.methods)
    edits = select_edits(config.edits)
    skipped: dict[str, str] = {}
    if not sd_available:
        needs_sd = [m for m in methods if m.model == "sd"]
        if needs_sd and config.methods is not None:
            raise UserError(f"method(s) {', '.join(m.name for m in needs_sd)} need a text-to-image model; "
                            "give --sd-model or leave them out of --methods")
        skipped = {m.name: "no text-to-image model (--sd-model)" for m in needs_sd}
        methods = [m for m in methods if m.model != "sd"]
    return Plan(config, methods, make_directions(config.suite, config.seed, edits), skipped)


def shard(items: list, process_index: int, num_processes: int) -> list:
    """Process ``process_index``'s share of ``items``: every ``num_processes``-th item (round-robin, so
    each process gets directions of every kind). Deterministic; the shares partition ``items``."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process index {process_index} out of range for {num_processes} processes")
    return items[process_index::num_processes]


def shard_of(text: str | None) -> tuple[int, int] | None:
    """A script's ``--shard I/N`` → (I, N) with 0 ≤ I < N; None when the option is not given."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like I/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 ≤ I < N")
    return i, n
