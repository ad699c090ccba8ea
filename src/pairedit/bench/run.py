"""Running a benchmark: load the models, compute this process's share of the work units into the
cache (skipping valid entries, recomputing corrupt ones), then — on the main process only — wait
for every unit and write the report.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..images import save_image
from .cache import Cache, CorruptEntry, key_of
from .methods import score, timed
from .suite import BenchConfig, Direction, Plan, Unit, make_plan, shard, stable_int

CLIP_FALLBACK = "openai/clip-vit-large-patch14"  # the CLIP whose text tower Stable Diffusion 1.x uses


@dataclass
class Stats:
    """What this process did: units computed / reused, corrupt entries found, learnings, captions."""

    computed: int = 0
    reused: int = 0
    corrupt: int = 0
    learned: int = 0
    captions: int = 0
    seconds: float = 0.0
    corrupt_paths: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Models


@dataclass
class ModelNames:
    ip2p: str
    sd: str | None
    clip: str


def resolve_models(model: str, sd_model: str | None, clip: str | None) -> ModelNames:
    """Which InstructPix2Pix, text-to-image and CLIP models a run uses (no loading).

    ``model`` is 'bundled', an InstructPix2Pix folder or hub id, or a bundle folder holding ``ip2p/``,
    ``sd/`` and ``clip/`` (as ``pairedit train`` exports). ``sd_model='auto'`` takes the bundle's
    text-to-image model when there is one, else none (SDEdit and PTI are then skipped, and reported so).
    """
    from ..models import BUNDLED

    if model == "bundled":
        root = BUNDLED["ip2p"].parent
        names = ModelNames("bundled", "bundled" if (BUNDLED["sd"] / "model_index.json").exists() else None, "bundled")
    elif (Path(model) / "ip2p").is_dir():
        root = Path(model)
        names = ModelNames(str(root / "ip2p"), str(root / "sd") if (root / "sd").is_dir() else None,
                           str(root / "clip") if (root / "clip").is_dir() else CLIP_FALLBACK)
    else:
        names = ModelNames(model, None, CLIP_FALLBACK)
    if sd_model not in (None, "auto"):
        names.sd = sd_model
    elif sd_model is None:
        names.sd = None
    if clip is not None:
        names.clip = clip
    return names


class Context:
    """The loaded models, the cache and the run settings; computes and caches captions, learned
    instructions and unit results."""

    def __init__(self, plan: Plan, names: ModelNames, device: str = "cpu"):
        from ..metrics import ClipFeatures
        from ..models import fingerprint, load_clip, load_ip2p, load_sd

        self.plan, self.suite, self.seed = plan, plan.suite, plan.config.seed
        self.names = names
        self.cache = Cache(plan.config.cache)
        self.stats = Stats()
        self.ip2p = load_ip2p(names.ip2p, device=device)
        self.sd = load_sd(names.sd, device=device) if names.sd and any(m.model == "sd" for m in plan.methods) else None
        self.clip, self.processor = load_clip(names.clip, device=device)
        self.clip_features = ClipFeatures(self.clip, self.processor)
        # The cache keys: every part that shapes a unit's output images, the VAE included (a decoder fine-tune
        # changes them while the UNet, text encoder and hence learned instructions stay valid).
        self.fingerprints = {"ip2p": fingerprint(self.ip2p.unet, self.ip2p.text_encoder, self.ip2p.vae),
                             "sd": (fingerprint(self.sd.unet, self.sd.text_encoder, self.sd.vae)
                                    if self.sd is not None else None),
                             "clip": fingerprint(self.clip)}
        self._instructions: dict[str, object] = {}

    # -- seeds and keys ------------------------------------------------------------------------

    def unit_seed(self, d: Direction, t: int) -> int:
        """Random-noise seed of one test image: shared by all methods, so rows differ by method only."""
        return stable_int(f"{self.seed}:{d.id}:{d.key}:test{t}")

    def learn_seed(self, d: Direction) -> int:
        return stable_int(f"{self.seed}:{d.id}:{d.key}:learn")

    def unit_key(self, unit: Unit) -> str:
        m = unit.method
        return key_of({"method": m.name, "params": m.params, "direction": unit.direction.key, "test": unit.test,
                       "settings": {s: getattr(self.suite, s) for s in m.settings}, "defaults": m.defaults(),
                       "seed": self.seed, "model": self.fingerprints[m.model], "clip": self.fingerprints["clip"]})

    @staticmethod
    def unit_path(unit: Unit, key: str) -> str:
        return f"units/{unit.direction.id}/{unit.method.name}/test{unit.test}-{key}"

    # -- cached pieces ---------------------------------------------------------------------------

    def _read(self, rel: str, key: str) -> dict | None:
        try:
            return self.cache.read(rel, key)
        except CorruptEntry as err:
            self.stats.corrupt += 1
            self.stats.corrupt_paths.append(rel)
            print(f"pairedit bench: recomputing a corrupt cache entry: {err}", file=sys.stderr)
            return None

    def caption(self, d: Direction, n: int) -> str:
        """The PEZ caption of the first ``n`` example after-images (VISII's caption init), cached."""
        from ..images import fit
        from ..pez import pez_caption
        from ..visii import VisiiConfig, model_resolution

        key = key_of({"caption": d.key, "n": n, "steps": self.suite.caption_steps, "seed": self.learn_seed(d),
                      "clip": self.fingerprints["clip"], "resolution": model_resolution(self.ip2p)})
        rel = f"captions/{d.id}/{n}p-{key}.json"
        record = self._read(rel, key)
        if record is None:
            res = model_resolution(self.ip2p)
            afters = [fit(p.images()[1], res) for p in d.examples[:n]]
            text, secs = timed(pez_caption, self.clip, self.processor, afters, n_tokens=VisiiConfig.caption_tokens,
                               steps=self.suite.caption_steps, seed=self.learn_seed(d))
            record = self.cache.write(rel, {"key": key, "caption": text, "seconds": secs})
            self.stats.captions += 1
        return record["caption"]

    def instruction(self, d: Direction, loss: str, init: str, pairs: int):
        """The VISII instruction of one learning variant, learned once and cached as .safetensors."""
        from ..instruction import InstructionError, load_instruction, save_instruction
        from ..visii import VisiiConfig, learn

        config = VisiiConfig(steps=self.suite.visii_steps, caption_steps=self.suite.caption_steps,
                             lambda_clip=0.0 if loss == "mse" else VisiiConfig.lambda_clip, seed=self.learn_seed(d))
        key = key_of({"learn": d.key, "loss": loss, "init": init, "pairs": pairs, "config": asdict(config),
                      "model": self.fingerprints["ip2p"], "clip": self.fingerprints["clip"]})
        if key in self._instructions:
            return self._instructions[key]
        base = f"instructions/{d.id}/{loss}-{init}-{pairs}p-{key}"
        record = self._read(base + ".json", key)
        inst = None
        if record is not None:
            try:
                inst = load_instruction(self.cache.file(record, "instruction"))
            except InstructionError as err:  # hash matched but unreadable: count it as corrupt
                self.stats.corrupt += 1
                print(f"pairedit bench: recomputing a corrupt cache entry: {err}", file=sys.stderr)
        if inst is None:
            init_text = d.instruction if init == "gt" else self.caption(d, pairs)
            examples = [p.images() for p in d.examples[:pairs]]
            inst, secs = timed(learn, self.ip2p, self.clip, self.processor, examples, config, init_text=init_text,
                               model_id=self.names.ip2p, clip_id=self.names.clip, progress=False)
            save_instruction(inst, self.cache.path(base + ".safetensors"))
            self.cache.write(base + ".json", {"key": key, "init_text": init_text, "seconds": secs},
                             files={"instruction": base + ".safetensors"})
            self.stats.learned += 1
        self._instructions[key] = inst
        return inst

    # -- units -----------------------------------------------------------------------------------

    def cached_unit(self, unit: Unit) -> dict | None:
        key = self.unit_key(unit)
        return self._read(self.unit_path(unit, key) + ".json", key)

    def compute_unit(self, unit: Unit) -> dict:
        """Run the method, score the output, write the PNG and the sealed record."""
        m, d, t = unit.method, unit.direction, unit.test
        key = self.unit_key(unit)
        base = self.unit_path(unit, key)
        output, secs = timed(m.fn, self, d, t, **m.params)
        scores = score(self.clip_features, d, t, output)
        save_image(output, self.cache.path(base + ".png"))
        record = {"key": key, "method": m.name, "direction": d.id, "edit": d.edit.name, "kind": d.kind, "test": t,
                  "target_style": d.target_style, "scores": scores, "seconds": round(secs, 3)}
        return self.cache.write(base + ".json", record, files={"output": base + ".png"})


# ----------------------------------------------------------------------------------------------
# Running


def run_shard(ctx: Context, process_index: int = 0, num_processes: int = 1, progress: bool = True) -> Stats:
    """Compute this process's directions (``shard``) unit by unit; valid cached units are skipped."""
    from tqdm.auto import tqdm

    mine = shard(ctx.plan.directions, process_index, num_processes)
    units = ctx.plan.units(mine)
    t0 = time.perf_counter()
    bar = tqdm(units, desc=f"bench [{process_index + 1}/{num_processes}]", unit="unit", disable=not progress,
               position=process_index, dynamic_ncols=True)
    for unit in bar:
        bar.set_postfix_str(f"{unit.direction.id} {unit.method.name}", refresh=False)
        if ctx.cached_unit(unit) is not None:
            ctx.stats.reused += 1
            continue
        ctx.compute_unit(unit)
        ctx.stats.computed += 1
    ctx.stats.seconds = time.perf_counter() - t0
    return ctx.stats


def wait_for_units(ctx: Context, poll: float = 5.0, progress: bool = True) -> None:
    """Main process: wait until every unit of the plan has a valid record (other processes write
    theirs). A file poll instead of a collective barrier: shards may finish hours apart."""
    from tqdm.auto import tqdm

    todo = ctx.plan.units()
    bar = tqdm(total=len(todo), desc="waiting for all processes", unit="unit", disable=not progress)
    while True:
        pending = []
        for unit in todo:
            key = ctx.unit_key(unit)
            try:
                ok = ctx.cache.read(ctx.unit_path(unit, key) + ".json", key) is not None
            except CorruptEntry:
                ok = False  # possibly being written right now; another process owns it
            if not ok:
                pending.append(unit)
        bar.update(len(todo) - len(pending))
        todo = pending
        if not todo:
            break
        time.sleep(poll)
    bar.close()


def collect(ctx: Context) -> list[dict]:
    """Every unit's record, read from the cache (with its output PNG path resolved)."""
    records = []
    for unit in ctx.plan.units():
        record = ctx.cached_unit(unit)
        if record is None:
            raise UserError(f"unit {unit.method.name} × {unit.direction.id} × test {unit.test} has no valid cache "
                            "record; run the benchmark again to compute it")
        records.append(dict(record, output_path=str(ctx.cache.file(record, "output"))))
    return records


@dataclass
class RunInfo:
    """Facts about this invocation the report states."""

    process_index: int
    num_processes: int
    wall_seconds: float
    stats: Stats
    names: ModelNames
    fingerprints: dict


def distributed_position(device: str) -> tuple[int, int, str]:
    """(process_index, num_processes, device) from accelerate: one process when not launched by it.

    Under ``accelerate launch --multi_gpu --num_processes N`` (or ``torchrun --nproc_per_node N``)
    each process gets its rank; on CPU, PartialState(cpu=True) sets up the gloo backend; on GPUs,
    ``--device cuda`` becomes each process's own GPU.
    """
    if "LOCAL_RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    if device == "cuda":
        device = str(state.device)
    return state.process_index, state.num_processes, device


def run_benchmark(config: BenchConfig, process_index: int | None = None, num_processes: int | None = None,
                  progress: bool = True) -> tuple[Plan, list[dict] | None, RunInfo]:
    """Plan, compute this process's share, and (main process) wait, aggregate and write the report.

    ``process_index``/``num_processes`` default to accelerate's; pass them to run one shard in-process
    (run the other shards first: the main process waits until every unit is in the cache).
    Returns (plan, records or None on non-main processes, run info).
    """
    t0 = time.perf_counter()
    names = resolve_models(config.model, config.sd_model, config.clip)
    plan = make_plan(config, sd_available=names.sd is not None)  # every name checked before any work
    device = config.device
    if process_index is None or num_processes is None:
        process_index, num_processes, device = distributed_position(config.device)
    ctx = Context(plan, names, device=device)
    stats = run_shard(ctx, process_index, num_processes, progress=progress)
    info = RunInfo(process_index, num_processes, 0.0, stats, names, ctx.fingerprints)
    if process_index != 0:
        return plan, None, info
    if num_processes > 1:
        wait_for_units(ctx, progress=progress)
    records = collect(ctx)
    info.wall_seconds = time.perf_counter() - t0
    from .report import write_report

    write_report(plan, records, info)
    return plan, records, info
