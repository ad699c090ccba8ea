"""A resumable benchmark that reproduces VISII's Table 1 on the paired-edit world, with a report.

Edit directions come from the world's held-out split; each has up to 4 example pairs and a few
test images with known true results. Every method (``methods.METHODS``: InstructPix2Pix, SDEdit,
PTI and the VISII variants of Table 1) edits every test image; each (method, direction, test
image) is one work unit whose result is cached as a sealed JSON record plus the output PNG.
A run skips valid records, recomputes corrupt ones, and writes ``benchmark.md`` from the cache.

Commands (one process; then two processes, on CPU or GPUs — the same code)::

    pairedit bench --suite quick                       # < 10 min on a 2-core CPU, report to docs/
    pairedit bench --suite full --out docs/            # the reported one (hours on CPU)
    accelerate launch --multi_gpu --num_processes 2 -m pairedit.cli bench --suite full
    torchrun --nproc_per_node 2 -m pairedit.cli bench --suite full      # equivalent launcher

On CPU use ``--multi_gpu`` (accelerate's torchrun launcher; ``--cpu`` alone starts one process):
each process sees ``device=cpu`` and joins a gloo group. Directions are split round-robin by
process rank (``suite.shard``); the main process then waits for every unit in the cache and
writes the report. An interrupted run resumes where it stopped: run the same command again.

Modules: ``suite`` (sizes, directions, plan; validation before work), ``methods`` (the method
specs and scoring), ``cache`` (sealed records), ``run`` (models, shards, waiting), ``report``.
"""

from __future__ import annotations

import shlex

from .methods import METHODS, Method
from .run import run_benchmark
from .suite import KINDS, SUITES, BenchConfig, Suite, get_suite, make_plan

__all__ = ["METHODS", "Method", "KINDS", "SUITES", "Suite", "BenchConfig", "get_suite", "make_plan", "run_benchmark",
           "add_cli"]


def _split(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


_OPTIONS = ("suite", "out", "cache", "model", "sd_model", "clip", "methods", "edits", "seed", "directions", "tests",
            "visii_steps", "device")


def command_line(args) -> str:
    """The command that repeats this run: ``pairedit bench`` with every option it was given a value for."""
    parts = ["pairedit", "bench", "--suite", args.suite]
    for name in _OPTIONS[1:]:
        value = getattr(args, name)
        if value is not None and value != args.defaults.get(name):
            parts += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def cmd_bench(args) -> int:
    """`pairedit bench`: build the config (names checked before any work), run, print where the report is."""
    from pathlib import Path

    if args.list_methods:
        for m in METHODS.values():
            print(f"{m.name:28s} {m.label}")
        return 0
    suite = get_suite(args.suite, directions=args.directions, tests=args.tests, visii_steps=args.visii_steps)
    config = BenchConfig(
        suite=suite, out=Path(args.out), cache=Path(args.cache), model=args.model,
        sd_model=None if args.sd_model == "none" else args.sd_model, clip=args.clip,
        methods=_split(args.methods), edits=_split(args.edits), seed=args.seed, device=args.device,
        command=command_line(args))
    plan, records, info = run_benchmark(config, progress=not args.no_progress)
    if records is not None:
        print(f"benchmark: {len(records)} units ({info.stats.computed} computed, {info.stats.reused} reused, "
              f"{info.stats.corrupt} corrupt recomputed) in {info.wall_seconds:.0f} s; "
              f"report: {Path(args.out) / 'benchmark.md'}")
    return 0


def add_cli(sub) -> None:
    """Register ``pairedit bench``."""
    p = sub.add_parser(
        "bench", help="benchmark VISII against InstructPix2Pix, SDEdit and PTI (VISII Table 1) on held-out edits",
        description="Run every method on edit directions of the world's held-out split, cache each result, and "
                    "write OUT/benchmark.md with Table 1, ground-truth scores, the paper's findings checked, "
                    "per-category tables, histograms and example grids. Interrupted runs resume. Multi-process: "
                    "accelerate launch --multi_gpu --num_processes 2 -m pairedit.cli bench ...")
    p.add_argument("--suite", choices=list(SUITES), default="quick",
                   help="sizes: quick (8 directions, < 10 min on CPU) or full (the reported one) (default: %(default)s)")
    p.add_argument("--out", default="docs", metavar="DIR",
                   help="folder for benchmark.md and benchmark/ (figures, results.json) (default: %(default)s)")
    p.add_argument("--cache", default=".pairedit-bench-cache", metavar="DIR",
                   help="folder of cached results; shared by suites, safe to delete (default: %(default)s)")
    p.add_argument("--model", default="bundled",
                   help="InstructPix2Pix model: 'bundled', a folder, a bundle folder with ip2p/ sd/ clip/, or a hub id "
                        "(default: %(default)s)")
    p.add_argument("--sd-model", default="auto",
                   help="text-to-image model for SDEdit and PTI: 'auto' (the bundle's), a folder, a hub id, or 'none' "
                        "(default: %(default)s)")
    p.add_argument("--clip", default=None,
                   help="CLIP for the VISII loss, captions and metrics (default: the bundle's, else "
                        "openai/clip-vit-large-patch14)")
    p.add_argument("--methods", default=None, metavar="A,B,...",
                   help="methods or shell patterns, e.g. ip2p,sdedit,'visii-*-1p-*' (default: all; see --list-methods)")
    p.add_argument("--edits", default=None, metavar="K,...",
                   help=f"direction kinds ({', '.join(KINDS)}) or edit types, round-robin (default: all kinds)")
    p.add_argument("--seed", type=int, default=0, help="seed of directions, noises and learning (default: %(default)s)")
    p.add_argument("--directions", type=int, default=None, help="override the suite's number of directions")
    p.add_argument("--tests", type=int, default=None, help="override the suite's test images per direction")
    p.add_argument("--visii-steps", type=int, default=None, help="override the suite's VISII learning steps")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu; under accelerate on GPUs: cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list-methods", action="store_true", help="list the methods and exit")
    p.set_defaults(func=cmd_bench, defaults={name: p.get_default(name) for name in _OPTIONS})
