"""Cost of one VISII learning step: seconds per step and peak memory, ours vs. the reference-style loop.

    python scripts/perf_visii.py                      # all runs, prints the table, writes docs/performance.md
    python scripts/perf_visii.py --repeat 2           # each run twice, the lower time kept (for a loaded machine)
    python scripts/perf_visii.py --one big guided     # a single measurement (prints one JSON line)

Models (random weights: same cost as trained ones):
  small — the bundled architecture: UNet (64, 128, 128), cross-attention 128, 8 input channels, 64×64 images
          (16×16 latents); the default VAE; a 128-wide CLIP and the world's BPE tokenizer.
  big   — Stable Diffusion 1.5's UNet (860 M parameters, 8 input channels as InstructPix2Pix) at 256×256
          images (32×32 latents), a ViT-L/14-sized text tower (768 wide, 12 layers, 77 positions) with a
          768→768 CLIP projection; the VAE and the CLIP vision tower are small (they run once, before the loop).

Runs: visii.learn with loss_on="conditional" and "guided" (init_text given, so no PEZ), the conditional loss
under bf16 autocast, and a reference-style loop (written below): the three guidance branches as one batch,
all with autograd, loss on the guided prediction, backward through all three. Each run is its own
subprocess; time per step excludes the first (warm-up) step; memory is read from /proc/self/status.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

THREADS = 2
STEPS = {"small": 30, "big": 4}
RUNS = ["conditional", "guided", "conditional-bf16", "reference"]
INIT_TEXT = "make the circle blue"
DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


# ------------------------------------------------------------------------------------------------
# Memory: VmRSS now, VmHWM (peak) since the last reset


def _status_kb(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def mark_baseline(state: dict) -> None:
    """Record the RSS right before the loop and reset the peak counter (Linux: clear_refs 5)."""
    state["peak_before_loop_mb"] = _status_kb("VmHWM") / 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    state["baseline_mb"] = _status_kb("VmRSS") / 1024


# ------------------------------------------------------------------------------------------------
# Models


def build(size: str):
    """(InstructPix2Pix pipeline, CLIPModel, CLIPProcessor) of ``size`` with random weights."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    from pairedit import models, world

    torch.manual_seed(0)
    tok_dir = tempfile.mkdtemp(prefix="perf-tok-")
    tokenizer = models.build_tokenizer(world.corpus(), tok_dir)
    if size == "small":
        clip = CLIPModel(models.clip_config(tokenizer, width=128))
        unet = models.widen_conv_in(UNet2DConditionModel(**models.unet_config()))
        vae = AutoencoderKL(**models.vae_config())
        image_size = 64
    else:
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)  # SD's 77 positions
        small = models.clip_config(tokenizer, width=128, layers=2).vision_config.to_dict()
        text = dict(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        clip = CLIPModel(CLIPConfig(text_config=text, vision_config=small, projection_dim=768))
        # SD-1.5: diffusers' defaults are its block types; the rest spelled out.
        unet = UNet2DConditionModel(sample_size=32, in_channels=8, out_channels=4, layers_per_block=2,
                                    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                    attention_head_dim=8)
        vae = AutoencoderKL(**models.vae_config(channels=(32, 64, 64, 64), sample_size=256))  # 8× down
        image_size = 64
    pipe = StableDiffusionInstructPix2PixPipeline(
        unet=unet.eval(), vae=vae.eval(), text_encoder=models.text_encoder_from_clip(clip).eval(),
        tokenizer=tokenizer, scheduler=EulerAncestralDiscreteScheduler.from_config(models.noise_schedule_config()),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe, clip.eval(), CLIPProcessor(image_processor=models.clip_image_processor(image_size),
                                            tokenizer=tokenizer)


def random_pair(resolution: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return tuple(Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8))
                 for _ in range(2))


# ------------------------------------------------------------------------------------------------
# The reference-style loop: all three branches with autograd (as the VISII reference implementation)


def reference_loop(pipe, clip, processor, before, after, config, steps: int, tick) -> None:
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from pairedit import visii
    from pairedit.sampling import encode_text, guided_eps

    for m in (pipe.unet, pipe.vae, pipe.text_encoder, clip):
        m.requires_grad_(False)
    emb = visii.InstructionEmbedding(*visii.encode_instruction(pipe, INIT_TEXT))
    (z_x,), (z_y,) = visii.encode_pairs(pipe, [before], [after])
    delta = visii.edit_direction(clip, processor, [before], [after])
    uncond = encode_text(pipe, "")
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    opt = torch.optim.AdamW([emb.span], lr=config.lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        t = torch.randint(0, schedule.config.num_train_timesteps, (1,), generator=g)
        eps = torch.randn(z_y.shape, generator=g)
        cond = emb()
        eps_hat = guided_eps(pipe.unet, schedule.add_noise(z_y, eps, t), t, z_x, cond, uncond,
                             config.s_text, config.s_image)  # one batch of 3, graph kept for all three
        loss = config.lambda_mse * F.mse_loss(eps_hat, eps) + \
            config.lambda_clip * visii.clip_loss(clip, cond, emb.start, emb.end, delta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tick()


# ------------------------------------------------------------------------------------------------
# One measurement (in its own process)


def measure(size: str, run: str, threads: int) -> dict:
    from pairedit import visii

    torch.set_num_threads(threads)
    state: dict = {"size": size, "run": run, "steps": STEPS[size], "threads": threads}

    class MarkedAdamW(torch.optim.AdamW):
        """Both loops build their optimiser right after the one-off encodings: the baseline is taken there."""

        def __init__(self, *args, **kwargs):
            mark_baseline(state)
            super().__init__(*args, **kwargs)

    torch.optim.AdamW = MarkedAdamW
    pipe, clip, processor = build(size)
    before, after = random_pair(visii.model_resolution(pipe))
    state["unet_params_m"] = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    stamps: list[float] = []
    config = visii.VisiiConfig(steps=STEPS[size], loss_on="guided" if run == "guided" else "conditional")
    if run == "reference":
        reference_loop(pipe, clip, processor, before, after, config, STEPS[size],
                       lambda: stamps.append(time.perf_counter()))
    else:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.endswith("bf16"))
        with autocast:
            visii.learn(pipe, clip, processor, [(before, after)], config, init_text=INIT_TEXT, progress=False,
                        callback=lambda step, loss: stamps.append(time.perf_counter()))
    durations = [b - a for a, b in zip(stamps, stamps[1:])]  # steps 2..N: the first is warm-up
    state["s_per_step"] = statistics.median(durations)
    state["s_per_step_mean"] = statistics.mean(durations)
    state["loop_peak_mb"] = _status_kb("VmHWM") / 1024  # peak since the baseline
    state["increment_mb"] = state["loop_peak_mb"] - state["baseline_mb"]
    # Whole process; ru_maxrss would lose the pre-loop peak, as clear_refs resets it too.
    state["peak_rss_mb"] = max(state["peak_before_loop_mb"], state["loop_peak_mb"])
    return state


# ------------------------------------------------------------------------------------------------
# All measurements, table and document


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    import diffusers

    return {"nproc": os.cpu_count(), "cpu": cpu, "avx512": "avx512f" in flags, "mem_gb": mem / 2**20,
            "torch": torch.__version__, "diffusers": diffusers.__version__}


def table(results: dict) -> str:
    names = {"conditional": "ours, loss_on=conditional", "guided": "ours, loss_on=guided (2 branches no-grad)",
             "conditional-bf16": "ours, conditional, bf16 autocast",
             "reference": "reference-style (3 branches, all autograd)"}
    rows = ["| run | model | threads | s/step | each run | peak RSS (process) | RSS before loop | loop increment |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for size, threads in dict.fromkeys((s, t) for s, t, _ in results):
        for run in RUNS:
            r = results.get((size, threads, run))
            if r:
                runs = ", ".join(f"{v:.3g}" for v in r.get("all_s_per_step", [r["s_per_step"]]))
                rows.append(f"| {names[run]} | {size} | {threads} | {r['s_per_step']:.3g} | {runs} | "
                            f"{r['peak_rss_mb'] / 1024:.2f} GB | "
                            f"{r['baseline_mb'] / 1024:.2f} GB | {r['increment_mb'] / 1024:.2f} GB |")
    return "\n".join(rows)


def noise_note(rows: dict, ratio: float) -> str:
    """A warning when repeated runs of one configuration differ more than reference and guided do."""
    spread = max((max(r["all_s_per_step"]) / min(r["all_s_per_step"]) for r in rows.values()
                  if len(r.get("all_s_per_step", [])) > 1), default=1.0)
    if 1 / spread <= ratio <= spread and spread > 1.1:
        return (f" That time difference is inside the spread of repeated runs of one configuration under this"
                f" load (up to {spread:.2f}×), so this measurement does not resolve it.")
    return ""


def reading(results: dict) -> str:
    lines = []
    for size, threads in dict.fromkeys((s, t) for s, t, _ in results):
        r = {run: results[(size, threads, run)] for run in RUNS if (size, threads, run) in results}
        if {"guided", "reference", "conditional"} <= r.keys():
            ref, gui, con = r["reference"], r["guided"], r["conditional"]
            lines.append(
                f"- **{size}, {threads} thread(s)**: the guided loss takes {gui['s_per_step']:.3g} s/step against the "
                f"reference-style loop's {ref['s_per_step']:.3g} s (the reference takes "
                f"{ref['s_per_step'] / gui['s_per_step']:.2f}× as long), and "
                f"its loop grows memory by {gui['increment_mb'] / 1024:.2f} GB instead of "
                f"{ref['increment_mb'] / 1024:.2f} GB ({ref['increment_mb'] / max(gui['increment_mb'], 1):.1f}× "
                f"as much for the reference)." + noise_note(r, ref["s_per_step"] / gui["s_per_step"])
                + f" The conditional loss (the paper's Eq. 2) takes {con['s_per_step']:.3g} s/step "
                f"(the reference takes {ref['s_per_step'] / con['s_per_step']:.2f}× as long), "
                f"+{con['increment_mb'] / 1024:.2f} GB."
                + (f" Under bf16 autocast it takes {r['conditional-bf16']['s_per_step']:.3g} s/step, "
                   f"+{r['conditional-bf16']['increment_mb'] / 1024:.2f} GB." if "conditional-bf16" in r else ""))
    return "\n".join(lines)


BARRIER_NOTE = """
With two torch threads on two cores that other processes also use, every parallel region waits at
its barrier for whichever thread the scheduler has parked, so small operations (the bundled model)
slow down several-fold and erratically; one thread is the meaningful figure under load.
"""


def write_doc(results: dict, info: dict, command: str, load: tuple[str, str], repeat: int, context: str) -> str:
    barrier = BARRIER_NOTE if any(t > 1 for _, t in info["models"]) else ""
    steps = ", ".join(f"{n} steps on the {s} model" for s, n in STEPS.items())
    avx = "yes" if info["avx512"] else "no"
    threads = ", ".join(f"{s} {t}" for s, t in info["models"])
    params = {s: next((r["unet_params_m"] for r in results.values() if r["size"] == s), 0.0) for s in STEPS}
    text = f"""# Performance of a VISII learning step

What one learning step of `pairedit learn` costs on this CPU, for the bundled model and for a full-size
Stable Diffusion 1.5-architecture InstructPix2Pix UNet, next to a loop that back-propagates through all
three guidance branches as the VISII reference implementation does. Written by `scripts/perf_visii.py`.

## Machine and command

- CPU: {info['cpu']}, {info['nproc']} cores (`nproc`), AVX-512: {avx}, {info['mem_gb']:.0f} GB RAM
- torch {info['torch']} (CPU build), diffusers {info['diffusers']}, torch threads per model: {threads}
- load average (1, 5, 15 min) before: {load[0]}; after: {load[1]}
- command: `{command}`

**What else ran:** {context}. A load average up to {info['nproc']} means every process had a core
of its own; above it, processes waited for a core and the times grow. For an idle machine compare
/work/shared/figures.md (full-size UNet, 2 threads: conditional forward + backward 4.0 s, two branches
no-grad + conditional with grad 4.6 s, three branches all with autograd 7.7 s, conditional in bf16 2.2 s);
the ratios between rows of one model and thread count are what to read. Each configuration ran
{repeat}× (in whole rounds, so a change of load hits every row alike) and the lower time is kept.
{barrier}
## Results

{steps}; s/step is the median over steps 2..N (the first step is warm-up), the lowest of the
runs ("each run" lists them all: their spread shows how much the load moved the times). Each row is a
separate process. "Peak RSS (process)" is the whole process's high-water mark (VmHWM, including building the model);
"RSS before loop" is the resident size right before the first step (model weights, the one-off
encodings); "loop increment" is the high-water mark during the loop minus that baseline (the peak
counter is reset there with `/proc/self/clear_refs`), i.e. what the learning step itself needs.

{table(results)}

Models (random weights; a step costs the same with trained ones):

- **small** — the bundled architecture: UNet (64, 128, 128), one layer per block, cross-attention 128,
  8 input channels ({params['small']:.1f} M parameters), 64×64 images → 16×16×4 latents; the default VAE; a
  128-wide 4-layer CLIP and the world's BPE tokenizer (48 positions).
- **big** — SD-1.5's UNet: block_out_channels (320, 640, 1280, 1280), 2 layers per block,
  cross-attention 768, attention_head_dim 8, 8 input channels
  ({params['big']:.0f} M parameters), 256×256 images → 32×32×4 latents; a ViT-L/14-sized text tower
  (768 wide, 12 layers, 77 positions) and a CLIPModel with a 768→768 text projection.
  **Reduced:** the VAE (4 blocks of 32–64 channels, downsampling 8× like SD's) and the CLIP vision
  tower (128 wide, 2 layers, 64×64 input). Both only run before the loop — the latents z_x, z_y and
  the CLIP edit direction Δ are computed once — so they change neither the per-step time nor the
  loop increment; they lower only "RSS before loop" and the process peak somewhat. The text tower
  also runs only once (c_T is learned in its output space), but it is full-size, so c_T has SD's
  shape (77 × 768) and the CLIP loss uses a full-size projection.

## Reading

{reading(results)}

Why: the UNet's weights are frozen, and the learned c_T enters only the conditional branch
ε(c_I, c_T). The two instruction-independent branches ε(c_I, ∅) and ε(∅, ∅) contribute to the guided
prediction but have no gradient path to c_T. The reference implementation still runs them in one
autograd batch of three, so autograd keeps the intermediate activations of all three branches for
backward and then back-propagates the whole batch (a backward pass three samples wide).
`loss_on="guided"` runs those two branches under `torch.no_grad()` — nothing is stored for them and
they get no backward — and back-propagates only through the conditional branch. The gradient with
respect to c_T is the same (the no-grad branches are constants to it); the cost over the conditional
loss is one batch-2 forward. The conditional loss (the paper's Eq. 2) is a single batch-1 forward +
backward, the cheapest.

- Memory follows this directly: the loop increment of the guided loss is about that of the
  conditional one (one branch's activations); the reference-style loop's holds three branches' and
  is two to three times larger (the weights, the optimiser and allocator slack are shared baseline).
- Time: on the full-size UNet the work is in the convolutions and attention, so leaving out two
  branches' backward should save about 40% of the reference-style step (idle-machine figures in
  /work/shared/figures.md: 4.6 s against 7.7 s). On the bundled model a UNet call is a few tens of
  milliseconds, much of it per-call overhead (Python, dispatch, small kernels); the guided loss makes
  two UNet calls per step (batch 1 with grad, batch 2 without) where the reference-style loop makes one
  batch-3 call, and that extra call cancels the saved backward work, so there the gain is memory only.
- bf16 autocast should roughly halve the conditional step on the full-size UNet (this CPU's
  AVX-512 BF16 instructions run matmuls at about twice the fp32 rate; idle-machine figures: 2.2 s
  against 4.0 s) but it raises the loop increment: autocast caches bf16 casts only of tensors that
  require grad, and the frozen UNet's weights do not, so every step casts all 860 M weights to bf16
  (≈ 1.7 GB) and keeps most of the casts until backward. `visii.learn` has no dtype option of its own
  — it runs in the UNet's dtype
  (`pipe.to(torch.bfloat16)` would give pure bf16 weights instead) — so the bf16 row wraps the call
  in `torch.autocast("cpu", dtype=torch.bfloat16)` in this script, not in the library. Its effect on
  the learned instruction's quality is not measured here.
"""
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", nargs=2, metavar=("SIZE", "RUN"), help="one measurement in this process")
    ap.add_argument("--results", default="/tmp/perf_visii.json", help="raw results are saved here (default: %(default)s)")
    ap.add_argument("--render", action="store_true", help="only rewrite the document from the saved --results")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over all runs; the lower time is kept")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch threads of --one (default: %(default)s)")
    ap.add_argument("--context", default="nothing else (an idle machine)",
                    help="what else ran on the machine, written into the document (default: %(default)s)")
    ap.add_argument("--models", nargs="+", default=[f"{s}:{THREADS}" for s in STEPS], metavar="SIZE:THREADS",
                    help="model sizes and torch thread counts to measure (default: %(default)s)")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.threads)))
        return 0
    if args.render:
        saved = json.loads(Path(args.results).read_text())
        results = {(r["size"], r["threads"], r["run"]): r for r in saved["results"]}
        write_doc(results, saved["info"], saved["command"], tuple(saved["load"]), saved["repeat"],
                  saved.get("context", args.context))
        print(table(results))
        return 0
    models = [(m.split(":")[0], int(m.split(":")[1])) for m in args.models]
    command = "python " + " ".join(["scripts/perf_visii.py", *sys.argv[1:]])
    load_before, results = loadavg(), {}
    for _ in range(args.repeat):  # whole rounds, so a change of load hits every run alike
        for size, threads in models:
            for run in RUNS:  # one at a time: the big runs need several GB each
                out = subprocess.run([sys.executable, __file__, "--one", size, run, "--threads", str(threads)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{size:5s} {threads} thr {run:17s} {r['s_per_step']:.3f} s/step, peak {r['peak_rss_mb']:.0f} MB, "
                      f"loop +{r['increment_mb']:.0f} MB (load {loadavg()})", file=sys.stderr, flush=True)
                best = results.get((size, threads, run))
                r["all_s_per_step"] = (best or {}).get("all_s_per_step", []) + [r["s_per_step"]]
                if best is None or r["s_per_step"] < best["s_per_step"]:
                    results[(size, threads, run)] = r
                else:
                    best["all_s_per_step"] = r["all_s_per_step"]
    info, load = dict(machine(), models=models), (load_before, loadavg())
    Path(args.results).write_text(json.dumps(dict(results=list(results.values()), info=info, command=command,
                                                  load=load, repeat=args.repeat, context=args.context), indent=1))
    write_doc(results, info, command, load, args.repeat, args.context)
    print(table(results))
    print(f"\nwrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
