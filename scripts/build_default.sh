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
pairedit train t2i  --run "$RUN" --seed 0 --threads "$THREADS"     # text-to-image UNet
pairedit train ip2p --run "$RUN" --seed 0 --threads "$THREADS"     # InstructPix2Pix recipe
pairedit train export --run "$RUN"                                  # → src/pairedit/bundled (fp16)
pairedit train eval --models bundled --out docs/models_eval         # quality gates → docs/models.md
