#!/usr/bin/env bash
# The prepared GPU checks of issue 26, in two calls of the device tool (each ≤ 8 min on an H100):
#
#   bash bench/gpu_issue26.sh sd15   # cuda_graphs against eager (the gpu test), graph rates, kohya side by side
#   bash bench/gpu_issue26.sh sdxl   # random full-size SDXL at 1024² and 832×1216, checkpointing off/on, a project run
#
# Carried (ignored paths, `carry` of the device tool): .whl (our wheels: python bench/gpu_acceptance.py
# --print-download), and for the sd15 call .whl-kohya (its second command) and .kohya (sd-scripts'
# train_network.py, library/, networks/ from a fetched snapshot). Results go to $OUT (or gpu-out/).
# The gpu tests need pytest: where the box lacks it, put its wheels (pytest, pluggy, iniconfig) in .whl too.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
what=${1:-sd15}
site=/tmp/copylora-site
python3 -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl 2>&1 | tail -2
export PYTHONPATH="$site:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
case "$what" in
  sd15)
    python3 -c "import pytest" 2>/dev/null || echo "pytest is missing: carry pytest, pluggy and iniconfig wheels in .whl" | tee "$out/gpu-tests.txt"
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py -m gpu 2>&1 | tail -5 | tee "$out/gpu-tests.txt"
    kohya=()
    [ -d .kohya ] && kohya=(--kohya .kohya --kohya-wheels .whl-kohya --kohya-steps 60)
    timeout 420 python3 bench/gpu_acceptance.py --modes "" --rate-steps 60 --rate-optimizers AdamW8bit --rate-graphs \
        --profile-steps 0 "${kohya[@]}" --out "$out/sd15" --work /tmp/acc26 2>&1 | tail -40
    ;;
  sdxl)
    timeout 450 python3 bench/gpu_acceptance.py --modes "" --rate-steps 0 --profile-steps 0 --sdxl 1024x1024,832x1216 \
        --sdxl-steps 20 --sample-steps 12 --timeout 240 --out "$out/sdxl" --work /tmp/acc26x 2>&1 | tail -40
    ;;
  *) echo "usage: $0 sd15|sdxl" >&2; exit 2 ;;
esac
