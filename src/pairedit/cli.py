"""The `pairedit` command line. Each subcommand is a thin layer over the library.

User mistakes (bad files, bad parameters, unavailable models) print one line and exit 2;
Ctrl-C exits 130 after the running command has saved what it can.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .errors import UserError


def add_model_args(p: argparse.ArgumentParser, clip: bool = True) -> None:
    """Options every model-using command shares."""
    p.add_argument("--model", default="bundled",
                   help="diffusion model: 'bundled' (the small embedded default), a local folder, or a hub id "
                        "such as timbrooks/instruct-pix2pix (default: bundled)")
    if clip:
        p.add_argument("--clip", default="bundled",
                       help="CLIP model for losses, caption search and metrics: 'bundled', a folder, or a hub id "
                            "such as openai/clip-vit-large-patch14 (default: bundled)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model precision (default: float32; float16 needs a GPU)")


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairedit",
        description="Image editing by example: learn an edit from before/after pairs (Visual Instruction "
                    "Inversion) and apply it to new images; also InstructPix2Pix, SDEdit and inversion methods.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # --- VISII: learn / apply / demo (pairedit.visii) ---
    from . import visii

    visii.add_cli(sub)
    # --- text editing and inversion: edit / sdedit / invert (pairedit.editing, pairedit.inversion) ---
    from . import editing, inversion

    editing.add_cli(sub)
    inversion.add_cli(sub)
    # --- training the embedded default: train (pairedit.train) ---
    from . import training

    training.add_cli(sub)
    # --- benchmark: bench (pairedit.bench) ---
    from . import bench

    bench.add_cli(sub)
    return parser


def _terminate_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # `kill PID` (SIGTERM) gets the same treatment as Ctrl-C: training, learning and benchmarks save
    # their checkpoint and stop. Background jobs started by a shell ignore SIGINT, so this is the way to
    # stop them cleanly.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"pairedit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pairedit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
