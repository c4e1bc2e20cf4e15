#!/usr/bin/env bash
# The GPU work in one call on the lent machine (../shared/gpu/README.md): the throughput bench against
# the anchor, then the GPU-scale study (schedules/study/gpu), everything under $OUT. Prepare here:
#
#   bash ../shared/gpu/wheels.sh        # .whl/: torchtitan, lark, pydantic, ... for Python 3.12
#   .venv/bin/growdsl data prepare --corpus debian-docs --vocab 32000 --out gpu-data/debian-docs-32000
#
# then `run` with command `bash bench/gpu.sh`, carry [".whl", "gpu-data"], and copy $OUT/RESULTS.md's
# study section and $OUT/pictures into bench/RESULTS.md and bench/study/gpu.
set -uo pipefail
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"
timeout 240 python3 bench/train_throughput.py --steps 60 --warmup 10 --data gpu-data/debian-docs-32000 2>&1 | tee "$out/throughput.txt" | tail -8
python3 bench/study.py --gpu --seeds ${SEEDS:-1} --data gpu-data/debian-docs-32000 --out /tmp/study \
  --results "$out/RESULTS.md" 2>&1 | tee "$out/study.txt" | tail -40
cp -r bench/study/gpu "$out/pictures" 2>/dev/null
