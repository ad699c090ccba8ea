#!/usr/bin/env bash
# Rebuild the embedded default from scratch: the exact commands (seed 0) behind src/pairedit/bundled/.
# Every stage resumes from its last checkpoint when rerun; RUN is kept outside the repository.
# CPU time per stage is recorded in $RUN/provenance.json and copied to docs/models.md.
set -euo pipefail
RUN=${RUN:-/work/runs/default}
THREADS=${THREADS:-2}
pairedit train tokenizer --run "$RUN"
pairedit train clip --run "$RUN" --seed 0 --threads "$THREADS"     # 1,500 steps × 128 (image, caption)
pairedit train vae  --run "$RUN" --seed 0 --threads "$THREADS"     # 1,500 steps × 32 images
pairedit train vae-decoder --run "$RUN" --seed 0 --threads "$THREADS"  # 1,000 steps, decoder only
pairedit train t2i  --run "$RUN" --seed 0 --threads "$THREADS" --steps 1500   # text-to-image UNet
# InstructPix2Pix recipe; steps 1–1,250 ran in fp32 on a 20,000-step schedule, the rest in bf16 autocast
# on a 12,000-step schedule (the cosine is recomputed from --steps on resume).
pairedit train ip2p --run "$RUN" --seed 0 --threads "$THREADS" --steps 12000 --mixed-precision bf16
pairedit train export --run "$RUN"                                  # → src/pairedit/bundled (fp16)
pairedit train eval --models bundled --out docs/models_eval         # quality gates → docs/models.md
