#!/usr/bin/env bash
# Issue 24 on a lent GPU: the toy base pretrained from scratch in one device call (≤ 9 min),
# the U-Net phase captured as a CUDA graph (--cuda-graph: the toy's kernels are tiny, so an eager
# step on a GPU is all launch overhead). Evals are off here (eager sampling is slow on the GPU
# for the same reason): score the two folders it returns on the CPU afterwards with
#   python bench/toy_colours.py --base DIR --seeds 2 --guidance 7 --trained --threads 1 --out F.json
#
#   bash bench/gpu_issue24.sh [UNET_STEPS]     # default 19500 (run 24's U-Net steps, from scratch)
#
# Carried: .whl (diffusers for this image: python bench/gpu_acceptance.py --print-download; pytest is there).
# Returns in $OUT: toy.tgz (the EMA average), toy-last.tgz (the last step's weights), pretrain.log, gpu-test.txt.
# Untested on a GPU when written (2026-12-04): the CPU stand-in test checks the graph's plumbing.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out=${OUT:-gpu-out}
mkdir -p "$out"
steps=${1:-19500}
site=/tmp/copylora-site
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl 2>&1 | tail -2
export PYTHONPATH="$site:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
timeout 90 python3 -m pytest -q -s -p no:cacheprovider tests/test_toy_world.py -m gpu 2>&1 | grep -E "worst|^E |passed|failed" | tee "$out/gpu-test.txt"
# run 25's recipe (docs/BENCHMARKS.md) with run 24's U-Net steps, a VAE of its own; stops at 6 min of U-Net training whatever the steps
timeout 480 python3 bench/pretrain_toy.py --out /tmp/t24/toy --device cuda --cuda-graph --max-unet-minutes 6 \
    --vae-steps 2500 --unet-steps "$steps" --unet-batch 16 --unet-lr 1e-3 --te-lr 2e-3 --noise-offset 0.5 --radius 0.24,0.38 \
    --max-length 16 --te-width 64 --te-layers 4 --unet-heads 4 --shape-weight 4 --te-probe 0.1 --te-probe-steps 600 \
    --colour-jitter 25 --saturation-jitter 0.4 --ema 0.999 2>&1 | grep -v "Consider using\|losses.append\|UserWarning" > "$out/pretrain.log"
grep -E "captured|step (100|1000|5000|10000|15000|19500)/|minutes reached|wrote|Error|error" "$out/pretrain.log" | cut -c1-300
for d in toy toy-last; do [ -d /tmp/t24/$d ] && tar czf "$out/$d.tgz" -C /tmp/t24 "$d"; done
ls -la "$out"
