#!/usr/bin/env bash
# The GPU work on the lent machine (../shared/gpu/README.md), results under $OUT; each part fits one
# `run` call (10 minutes at most):
#
#   bash bench/gpu.sh throughput     # the throughput bench against the anchor (the trainer's first GPU run)
#   bash bench/gpu.sh study          # the GPU-scale study, one seed (SEEDS="1 2", ARMS="scratch gstack zero")
#
# Prepare here first, once, and pass carry [".whl", "gpu-data"]:
#   bash ../shared/gpu/wheels.sh        # .whl/: torchtitan, lark, pydantic, ... for Python 3.12
#   .venv/bin/growdsl data prepare --corpus debian-docs --vocab 32000 --out gpu-data/debian-docs-32000
# Then copy $OUT/RESULTS.md's study section and $OUT/pictures into bench/RESULTS.md and bench/study/gpu.
set -uo pipefail
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"
case "${1:-}" in
  throughput)
    python3 bench/train_throughput.py --steps 60 --warmup 10 --data gpu-data/debian-docs-32000 2>&1 \
      | tee "$out/throughput.txt" | tail -8 ;;
  study)
    python3 bench/study.py --gpu --seeds ${SEEDS:-1} ${ARMS:+--arms $ARMS} --data gpu-data/debian-docs-32000 \
      --out /tmp/study --results "$out/RESULTS.md" 2>&1 | tee "$out/study.txt" | tail -40
    cp -r bench/study/gpu "$out/pictures" 2>/dev/null ;;
  *) echo "usage: bash bench/gpu.sh throughput|study" >&2; exit 2 ;;
esac
