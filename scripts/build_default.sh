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
pairedit train vae-decoder --run "$RUN" --seed 0 --threads "$THREADS" --steps 3000  # session 8: resumed at 1,000, new cosine
pairedit train t2i  --run "$RUN" --seed 0 --threads "$THREADS" --steps 1500   # text-to-image UNet
# InstructPix2Pix recipe. The shipped run: steps 1–1,250 in fp32 on a 20,000-step schedule, then bf16 autocast
# on a 12,000-step schedule to step 5,904 and a 24,000-step one since (the cosine is recomputed from --steps on
# resume); from step 12,352 data-parallel on the two cores: 2 processes × batch 32 = the same global batch of 64.
accelerate launch --multi_gpu --num_processes 2 --num_machines 1 -m pairedit.cli \
    train ip2p --run "$RUN" --seed 0 --threads 1 --batch-size 32 --steps 24000 --mixed-precision bf16
# The shipped UNet then went on with longer schedules, each resuming the previous checkpoint (the full history with
# the steps where each change was made is the InstructPix2Pix row of docs/models.md): --steps 48000 --lr 2e-4 to
# step 31,358; --steps 150000 --lr 1.2e-4 to step 40,049; the same with --n-pairs 180000 to step 45,720; then
# `pairedit train snapshot --of ip2p --run "$RUN"` writes ip2p/final from the latest checkpoint's EMA weights.
pairedit train export --run "$RUN"                                  # → src/pairedit/bundled (fp16)
# Sessions 10–13 continued that UNet from the bundle (binding-heavy mix, cooldown) to step 64,018: the commands
# are in the InstructPix2Pix row of docs/models.md. Sessions 20–21 (shipped since): 9,000 more steps from the
# step-64,018 bundle (src/pairedit/bundled at commit fa3df91) with the text encoder trained jointly, then CLIP's
# image side refitted to that encoder so that it is CLIP's text tower again, in all three models.
BASE64K=${BASE64K:-/tmp/pairedit-base64k}   # git archive fa3df91 src/pairedit/bundled | tar -x -C "$BASE64K"
accelerate launch --multi_gpu --num_processes 2 --num_machines 1 -m pairedit.cli \
    train ip2p --run "$RUN-joint" --seed 0 --threads 1 --batch-size 32 --steps 9000 --lr 9.2e-5 --mixed-precision bf16 \
    --n-pairs 60000 --binding-pairs 60000 --compound-pairs 30000 --train-text-encoder \
    --base "$BASE64K/src/pairedit/bundled/ip2p"
pairedit train export --run "$RUN-joint" --unet-only --of ip2p     # UNet and its text encoder → bundled/ip2p
pairedit train clip --run "$RUN-clip" --seed 0 --threads 2 --steps 500 --lr 1e-4 \
    --base src/pairedit/bundled/clip --text-tower src/pairedit/bundled/ip2p/text_encoder  # the exported (fp16) one
pairedit train export --run "$RUN-clip" --clip-only               # CLIP → bundled/clip, its tower → sd/, ip2p/
# Session 24: the shipped VAE's decoder fine-tuned once more on posterior means (the latents the UNets see);
# the encoder stays frozen, so the UNets above are unaffected. (The shipped run began as --steps 4000 and was
# resumed at step 1,387 with --steps 2500: docs/models_eval/decoder_session24.json.)
pairedit train vae-decoder --run "$RUN-decoder" --seed 0 --threads "$THREADS" --steps 2500 --lr 1e-4 \
    --decode-from mode --base src/pairedit/bundled/ip2p
pairedit train export --run "$RUN-decoder" --vae-only              # → bundled/sd/vae, bundled/ip2p/vae
# Sessions 31–34 (shipped in session 34): the long continuation from the session-24 bundle (commit 9b4f3f3) on a
# 70,000-step cosine, stopped and resumed across sessions, snapshotted at its step 34,030 (UNet step 107,048).
# Rerunning with --steps 70000 trains on to the schedule's end; the shipped snapshot is the EMA at step 34,030.
BASE73K=${BASE73K:-/tmp/pairedit-base73k}   # git archive 9b4f3f3 src/pairedit/bundled | tar -x -C "$BASE73K"
accelerate launch --multi_gpu --num_processes 2 --num_machines 1 -m pairedit.cli \
    train ip2p --run "$RUN-long" --seed 0 --threads 1 --batch-size 32 --steps 70000 --lr 9.2e-5 --mixed-precision bf16 \
    --n-pairs 60000 --binding-pairs 60000 --compound-pairs 30000 --train-text-encoder \
    --base "$BASE73K/src/pairedit/bundled/ip2p"               # interrupted (Ctrl-C) at step 34,030
pairedit train snapshot --of ip2p --run "$RUN-long"
pairedit train export --run "$RUN-long" --unet-only --of ip2p      # UNet and its text encoder → bundled/ip2p
# CLIP refitted to that tower from the session-24 bundle's CLIP (which the export above leaves in place), and the
# text-to-image UNet fine-tuned on it, which the tower's drift made necessary (R-precision 41% without).
pairedit train clip --run "$RUN-clip34" --seed 0 --threads 1 --steps 1500 --lr 1e-4 \
    --base src/pairedit/bundled/clip --text-tower src/pairedit/bundled/ip2p/text_encoder
pairedit train export --run "$RUN-clip34" --clip-only             # CLIP → bundled/clip, its tower → sd/, ip2p/
pairedit train t2i --run "$RUN-t2i34" --seed 0 --threads 1 --steps 600 --base src/pairedit/bundled/sd
pairedit train export --run "$RUN-t2i34" --unet-only --of t2i      # → bundled/sd/unet
pairedit train eval --models bundled --out docs/models_eval         # quality gates → docs/models.md
