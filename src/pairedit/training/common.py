"""What every trainer shares: a seeded, resumable, interruptible loop with checkpoints and logs.

Checkpoints are safetensors (model, EMA and optimizer tensors) plus JSON (step, optimizer
hyper-parameters, config), never pickles. A checkpoint is written every ``ckpt_every`` steps and on
Ctrl-C or ``kill`` (SIGTERM), so an interrupted run loses at most one interval; rerunning the same command
resumes.

The loop runs under 🤗 Accelerate, so ``accelerate launch --multi_gpu --num_processes N -m pairedit.cli
train ...`` trains data-parallel with the same code, on GPUs or on CPU cores (gloo): each process draws
its own batch (seeds include the rank) and the gradients are averaged over processes every step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..images import atomic_write


@dataclass
class LoopConfig:
    out: str  # run folder: checkpoints, log.jsonl, exported model
    steps: int
    batch_size: int
    lr: float
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float | None = None  # EMA of weights for sampling (diffusion models)
    seed: int = 0
    ckpt_every: int = 250
    log_every: int = 25
    threads: int | None = None
    # 'bf16' autocasts forward passes (Accelerate); on an AVX512-BF16 CPU the ip2p UNet's forward+backward
    # of batch 32 at 1 thread took 0.78 s in bf16 (with models.training_attention) vs 1.25 s in fp32 (session 7);
    # on an AVX2-only CPU bf16 is emulated: 57 s vs 4.4 s per step of 64 (session 10; see cpu_has_native_bf16);
    # on an AVX512-BF16 Xeon without AMX it was slower too: 1.50 vs 1.06 s per data-parallel step of 64 (session 12);
    # on an AVX512-BF16 AMD EPYC it was faster: 0.43 vs 0.78-1.2 s for batch 32 at 1 thread, 0.53 s per
    # data-parallel step of 64 (session 13).
    # Weights, optimiser state and checkpoints stay fp32.
    mixed_precision: str = "no"


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16, AMX, Arm BF16); elsewhere PyTorch emulates it.

    Unknown (no /proc/cpuinfo) counts as yes: the warning it feeds is for the case that is known to be slow.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    return bool(set(cpuinfo.split()) & {"avx512_bf16", "amx_bf16", "bf16"})


def lr_lambda(cfg: LoopConfig) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to 10% of the peak."""
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return f


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "scalars": {}}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.contiguous()
            else:
                meta["scalars"][f"{idx}.{k}"] = v
    return tensors, meta


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, step: int, model: torch.nn.Module, opt, ema, cfg) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".step_{step:07d}.tmp"
    tmp.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    if ema is not None:
        save_file({f"{i}": p.detach().contiguous() for i, p in enumerate(ema.shadow_params)}, tmp / "ema.safetensors")
    meta = {"step": step, "optimizer": opt_meta, "config": asdict(cfg) if hasattr(cfg, "__dataclass_fields__") else cfg,
            "ema_optimization_step": getattr(ema, "optimization_step", None)}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=str))
    if hasattr(model, "save_config"):  # diffusers models: lets `pairedit train snapshot` rebuild it
        model.save_config(tmp)
    final = folder / f"step_{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(folder.glob("step_*"))[:-2]:  # keep the last two (a checkpoint may hold config folders)
        shutil.rmtree(old)


def latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob("step_*") if (p / "state.json").exists())
    return done[-1] if done else None


def load_checkpoint(ckpt: Path, model, opt, ema) -> int:
    model.load_state_dict(load_file(ckpt / "model.safetensors"))
    meta = json.loads((ckpt / "state.json").read_text())
    _unflatten_optimizer(opt, load_file(ckpt / "optimizer.safetensors"), meta["optimizer"])
    if ema is not None and (ckpt / "ema.safetensors").exists():
        shadow = load_file(ckpt / "ema.safetensors")
        device = next(model.parameters()).device
        ema.shadow_params = [shadow[str(i)].to(device) for i in range(len(shadow))]
        ema.optimization_step = meta.get("ema_optimization_step") or meta["step"]
    return int(meta["step"])


def load_weights(ckpt: Path, model: torch.nn.Module, ema: bool = True) -> torch.nn.Module:
    """Model weights from a checkpoint folder: the EMA weights when present and ``ema``."""
    model.load_state_dict(load_file(ckpt / "model.safetensors"))
    if ema and (ckpt / "ema.safetensors").exists():
        shadow = load_file(ckpt / "ema.safetensors")
        params = [p for p in model.parameters() if p.requires_grad]
        for p, s in zip(params, [shadow[str(i)] for i in range(len(shadow))]):
            p.data.copy_(s)
    return model


def train_loop(cfg: LoopConfig, model: torch.nn.Module, loss_fn: Callable[[int, torch.Generator], torch.Tensor],
               name: str) -> torch.nn.Module:
    """Optimise ``model`` for ``cfg.steps`` steps of ``loss_fn(step, generator)``; resumes from ``cfg.out``.

    ``loss_fn`` draws its batch from ``generator``, which is re-seeded from (seed, rank, step) every
    step: a resumed run sees exactly the batches the uninterrupted run would have seen.
    """
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # cpu=True on a machine without CUDA: under `accelerate launch --multi_gpu` the processes then join a gloo group.
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    model.to(accelerator.device)  # the same device as training_device()
    if cfg.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not cpu_has_native_bf16():
        accelerator.print(f"[{name}] warning: this CPU has no native bf16 (AVX512-BF16/AMX), so bf16 autocast is "
                          "emulated: 13x slower than fp32 for the InstructPix2Pix UNet on an AVX2 CPU. "
                          "Use --mixed-precision no here.")
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True) if cfg.ema_decay else None
    start = 0
    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, opt, ema)
        accelerator.print(f"[{name}] resuming from {ckpt} (step {start})")
    for g in opt.param_groups:  # this run's --lr, also when resuming a checkpoint saved with another peak
        g["initial_lr"] = cfg.lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg), last_epoch=-1)
    for g in opt.param_groups:
        g["lr"] = g["initial_lr"] * lr_lambda(cfg)(start)
    sched.last_epoch = start
    # The model is not wrapped (DDP would sync only when called through its wrapper, and ``loss_fn`` calls the
    # model it closes over): mixed precision comes from ``accelerator.autocast``, fp16 loss scaling from the
    # prepared optimizer, and ``sync_gradients`` averages over processes.
    sync_parameters(params, accelerator)
    opt = accelerator.prepare_optimizer(opt)
    gen = torch.Generator()
    log_path = out / "log.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=name,
               disable=not accelerator.is_main_process, mininterval=5)
    step, t0, running = start, time.time(), []

    def checkpoint(at: int) -> None:
        if accelerator.is_main_process:
            save_checkpoint(ckpt_dir, at, model, opt, ema, cfg)

    with StopRequests(name) as stop:
        try:
            for step in bar:
                gen.manual_seed(cfg.seed * 1_000_003 + accelerator.process_index * 7_919 + step)
                model.train()
                with accelerator.autocast():
                    loss = loss_fn(step, gen)
                # the stop flag travels with the loss, so every process stops before the same step's update
                flags = torch.stack([loss.detach().float(), torch.tensor(float(stop.requested), device=loss.device)])
                mean_loss, stopping = accelerator.reduce(flags, reduction="mean").tolist()  # over all processes
                if stopping:
                    raise KeyboardInterrupt
                if not math.isfinite(mean_loss):  # every process sees it, so all of them stop
                    raise FloatingPointError(f"[{name}] loss is {mean_loss} at step {step}")
                accelerator.backward(loss)
                sync_gradients(params, accelerator)
                if cfg.grad_clip:
                    accelerator.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.step(params)
                running.append(mean_loss)
                if (step + 1) % cfg.log_every == 0 and accelerator.is_main_process:
                    rec = {"step": step + 1, "loss": sum(running) / len(running), "lr": sched.get_last_lr()[0],
                           "sec_per_step": (time.time() - t0) / len(running)}
                    with open(log_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    bar.set_postfix(loss=f"{rec['loss']:.4f}")
                    running, t0 = [], time.time()
                if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
                    checkpoint(step + 1)
        except KeyboardInterrupt:  # from StopRequests, or raised by loss_fn: `step` steps are finished
            checkpoint(step)
            accelerator.print(f"[{name}] interrupted: checkpoint saved at step {step}; rerun the same command to resume")
            raise
    if ema is not None:
        ema.copy_to(params)
    return model


class StopRequests:
    """SIGINT / SIGTERM during the loop: every process stops before the same update, rank 0 saves, all exit.

    Raising KeyboardInterrupt at the signal (the CLI's default) can land anywhere: half-way through an
    optimizer step, inside a checkpoint being written, or while another process waits in an all-reduce.
    Under ``accelerate launch`` each worker gets the signal twice (from ``kill``/Ctrl-C and again from the
    launcher, which forwards it), and the second one used to interrupt the first one's checkpoint. Here a
    signal only sets a flag, which ``train_loop`` reduces over processes with the step's loss, so all ranks
    stop before the same step's update. Repeated signals are ignored while that happens (SIGKILL still works;
    the launcher sends it after its own grace period of 30 s).
    """

    def __init__(self, name: str) -> None:
        self.name, self.requested, self._previous = name, False, {}

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            print(f"\n[{self.name}] stop requested: stopping before the next update to save a checkpoint",
                  file=sys.stderr)
        self.requested = True

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # signals reach only the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _process_state():
    """Accelerate's view of this process (one per process; the first call joins the process group).

    The group's timeout is 3 h instead of 30 min: while rank 0 draws and encodes a new pair file (tens of
    minutes on a CPU) the other ranks wait for it at a barrier.
    """
    from datetime import timedelta

    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=3))


def training_device() -> torch.device:
    """This process's device under accelerate: its GPU when launched on GPUs, else the CPU."""
    return _process_state().device


def main_process_first():
    """A context in which the main process runs first and the others after it: files that every process
    reads (rendered data, cached latents) are then drawn and written once, not by all processes at once."""
    return _process_state().main_process_first()


def is_main_process() -> bool:
    """True in the one process that writes shared files (also when not launched by accelerate)."""
    return _process_state().is_main_process


def sync_parameters(params: list[torch.Tensor], accelerator) -> None:
    """Every process starts from the main process's weights."""
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, src=0)


def sync_gradients(params: list[torch.Tensor], accelerator) -> None:
    """Average the gradients over processes (one all-reduce of a flat buffer): data-parallel SGD."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))
