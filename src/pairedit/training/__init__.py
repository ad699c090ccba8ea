"""Training the embedded default models (see ``trainers`` for the chain and docs/models.md for the run)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from ..errors import UserError
from .trainers import (
    ClipTrainConfig,
    IP2PTrainConfig,
    T2ITrainConfig,
    VaeTrainConfig,
    deepen_ip2p,
    export_bundle,
    export_clip,
    export_unet,
    export_vae,
    snapshot_unet,
    train_clip,
    train_ip2p,
    train_t2i,
    train_tokenizer,
    train_vae,
    train_vae_decoder,
)

# Per-stage defaults for this CPU (steps, batch size, peak learning rate); docs/models.md records the runs.
STAGES = {
    "clip": (ClipTrainConfig, train_clip, dict(steps=1500, batch_size=128, lr=5e-4, weight_decay=0.1)),
    "vae": (VaeTrainConfig, train_vae, dict(steps=1500, batch_size=32, lr=5e-4)),
    "vae-decoder": (VaeTrainConfig, train_vae_decoder, dict(steps=1000, batch_size=32, lr=2e-4, warmup=50)),
    "t2i": (T2ITrainConfig, train_t2i, dict(steps=4000, batch_size=64, lr=4e-4)),
    "ip2p": (IP2PTrainConfig, train_ip2p, dict(steps=20000, batch_size=64, lr=3e-4)),
}


def add_cli(sub) -> None:
    p = sub.add_parser(
        "train", help="train the embedded default models (tokenizer, clip, vae, t2i, ip2p) and export the bundle",
        description="Train one stage of the embedded default. Stages read earlier stages from --run; rerunning "
                    "a stage resumes from its last checkpoint. Run under `accelerate launch -m pairedit.cli train ...` "
                    "for several processes/GPUs.")
    p.add_argument("stage", choices=["tokenizer", *STAGES, "snapshot", "export", "deepen", "eval"],
                   help="what to train; 'snapshot' writes STAGE/final from the latest checkpoint's EMA weights while "
                        "training goes on (see --of), 'export' writes the bundle, 'deepen' writes DEST/ip2p: the run's "
                        "InstructPix2Pix with two layers per UNet block, the same function to start from (train it "
                        "with `ip2p --run NEWRUN --base DEST/ip2p`), 'eval' measures a bundle's quality gates")
    p.add_argument("--of", default="ip2p", choices=("t2i", "ip2p"),
                   help="snapshot and export --unet-only: which stage (default: ip2p)")
    p.add_argument("--run", default="runs/default", help="run folder for data, checkpoints and logs (default: runs/default)")
    p.add_argument("--steps", type=int, help="optimisation steps (default: per stage, see pairedit.training.STAGES)")
    p.add_argument("--batch-size", type=int, help="batch size per process")
    p.add_argument("--lr", type=float, help="peak learning rate (warm-up then cosine)")
    p.add_argument("--seed", type=int, default=0, help="seed for data and initialisation (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                   help="autocast forward passes (Accelerate); weights and checkpoints stay fp32. bf16 runs on CPUs "
                        "with AVX512-BF16/AMX and on GPUs (time a few steps first: among AVX512-BF16 CPUs without AMX it "
                        "was twice as fast as fp32 on an AMD EPYC and slower on an Intel Xeon), fp16 on GPUs only "
                        "(default: no)")
    p.add_argument("--snr-gamma", type=float, default=None,
                   help="t2i/ip2p: weight the denoising loss by min(SNR, γ)/SNR (Min-SNR-γ, Hang et al. 2023; they use 5). "
                        "Default: unweighted, as in the papers")
    p.add_argument("--n-pairs", type=int, default=None,
                   help="ip2p: training pairs drawn from the world (default 60,000; more are drawn and encoded on first "
                        "use, in files of 60,000, and the pairs already drawn stay the same)")
    p.add_argument("--binding-pairs", type=int, default=None,
                   help="ip2p: extra training pairs that name one object of a scene with two or three (\"make the "
                        "circle red\" beside a square), drawn uniformly with the others (default 0, the paper's mix)")
    p.add_argument("--compound-pairs", type=int, default=None,
                   help="ip2p: extra training pairs with a style or background edit and an object edit in one "
                        "instruction (\"make it a watercolor painting and turn the circle into a star\"), so that "
                        "instructions compose as a VISII hybrid instruction needs (default 0)")
    p.add_argument("--twin-pairs", type=int, default=None,
                   help="ip2p: extra training pairs drawn as binding twins: one busy scene with one edit aimed at two "
                        "different objects (\"make the circle red\" / \"make the square red\"), so that only reading "
                        "the shape word fits both (default 0)")
    p.add_argument("--absent-pairs", type=int, default=None,
                   help="ip2p: extra training pairs whose object edit names a shape the scene does not hold, with the "
                        "scene unchanged as the after-image (\"remove the hexagon\" beside a circle: nothing to do), so "
                        "that the model looks for the named object before editing (default 0)")
    p.add_argument("--train-text-encoder", action="store_true", default=None,
                   help="ip2p: optimise the text encoder together with the UNet (same learning rate and EMA); the "
                        "paper keeps it frozen, and then the model's text encoder no longer equals CLIP's text tower. "
                        "Saved as ip2p/final/text_encoder and exported with the UNet (default: frozen)")
    p.add_argument("--edit-region-weight", type=float, default=None, metavar="LAMBDA",
                   help="ip2p: the latent cells an edit changes weigh 1+LAMBDA in each pair's loss (normalised per "
                        "pair), so that an object edit's loss is less about copying the rest of the image "
                        "(default 0: the paper's unweighted loss)")
    p.add_argument("--object-weight", type=float, default=None, metavar="LAMBDA",
                   help="ip2p: the latent cells of every object in a pair's before- or after-scene weigh 1+LAMBDA in "
                        "its loss (added to --edit-region-weight; normalised per pair): the named object and the ones "
                        "an edit must leave alone (default 0: the paper's unweighted loss)")
    p.add_argument("--decode-from", choices=("sample", "mode"), default=None,
                   help="vae-decoder: decode posterior samples (default, as LDM's autoencoders train) or the posterior "
                        "mean, the latent the diffusion models are trained on and produce")
    p.add_argument("--ckpt-every", type=int, default=250, help="steps between checkpoints (default 250)")
    p.add_argument("--base", default="",
                   help="clip/vae-decoder/t2i/ip2p: checkpoint to start from (a CLIP folder for clip; an SD folder or "
                        "hub id for t2i/ip2p; for ip2p also an InstructPix2Pix folder such as src/pairedit/bundled/ip2p "
                        "to continue it); its tokenizer, text encoder and VAE are used; vae-decoder fine-tunes that "
                        "folder's VAE. Default: the run's own")
    p.add_argument("--text-tower", default=None,
                   help="clip (with --base): a text encoder folder, e.g. RUN/ip2p/final/text_encoder of a "
                        "--train-text-encoder run, that replaces CLIP's text tower and stays frozen while the image "
                        "side and projections refit to it")
    p.add_argument("--shape-negatives", type=int, default=None, metavar="N",
                   help="clip: add N training scenes and their shape twins (one object's shape changed) to every batch "
                        "as hard negatives (NegCLIP), so that CLIP tells shapes apart (default 0)")
    p.add_argument("--dest", default=None, help="export/deepen: destination folder (export's default: the package's "
                                                "bundled/; deepen needs one)")
    p.add_argument("--unet-only", action="store_true",
                   help="export only: put just the --of stage's UNet into the bundle (for a run that continued a "
                        "bundled model with --base; the bundle's other parts stay)")
    p.add_argument("--vae-only", action="store_true",
                   help="export only: put just the run's fine-tuned VAE (vae-decoder) into the bundle's pipelines; "
                        "its encoder must be theirs")
    p.add_argument("--clip-only", action="store_true",
                   help="export only: put just the run's CLIP into the bundle, and its text tower as the text encoder "
                        "of the bundle's sd and ip2p pipelines (after `clip --base ... --text-tower ...`)")
    p.add_argument("--models", default="bundled", help="eval only: 'bundled' or a folder with clip/, sd/, ip2p/")
    p.add_argument("--only", default="clip,vae,t2i,ip2p,timing", help="eval only: comma-separated gates to run")
    p.add_argument("--out", default="docs/models_eval", help="eval only: folder for results.json and sample grids")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if args.stage == "tokenizer":
        train_tokenizer(run)
        return 0
    if args.stage == "eval":
        import json

        from .evaluate import evaluate_all

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(evaluate_all(args.models, Path(args.out), tuple(args.only.split(","))), indent=1))
        return 0
    if args.stage == "snapshot":
        print(f"wrote {snapshot_unet(run, args.of)}")
        return 0
    if args.stage == "deepen":
        if not args.dest:
            raise UserError("train deepen needs --dest (a folder for the deepened InstructPix2Pix)")
        print(f"wrote {deepen_ip2p(run, Path(args.dest))}")
        return 0
    if args.stage == "export":
        dest = {"dest": Path(args.dest)} if args.dest else {}
        if args.clip_only:
            print(f"wrote {export_clip(run, **dest)} and its text tower into the pipelines beside it")
        elif args.vae_only:
            print("wrote " + ", ".join(str(p) for p in export_vae(run, **dest)))
        elif args.unet_only:
            print(f"wrote {export_unet(run, args.of, **dest) / 'unet'}")
        else:
            export_bundle(run, **dest)
        return 0
    cls, fn, defaults = STAGES[args.stage]
    values = dict(defaults, out=str(run / args.stage.replace("-", "_")), seed=args.seed, ckpt_every=args.ckpt_every)
    for name in ("steps", "batch_size", "lr", "threads", "mixed_precision", "snr_gamma", "n_pairs", "binding_pairs",
                 "compound_pairs", "train_text_encoder", "text_tower", "edit_region_weight",
                 "object_weight", "decode_from", "twin_pairs", "shape_negatives", "absent_pairs"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values["base"] = args.base
    known = {f.name for f in fields(cls)}
    fn(run, cls(**{k: v for k, v in values.items() if k in known}))
    return 0
