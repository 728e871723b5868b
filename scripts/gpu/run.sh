#!/bin/bash
# The GPU check of issue 25, on a GPU machine of this workplace, from the root of the checkout
# that travels there with .whl and .gpu carried (made by scripts/gpu/kit.sh):
#   bash .gpu/run.sh round bench liger 2>&1 | tee $OUT/log
# Installs the wheels into /tmp/site, prints the machine and versions, then runs each named step
# under its own time limit, its log and JSON in $OUT (at most 8 files come back):
#   round   benchmarks/gpu_round.py: one gpu-1b round, round-0/1 evaluation, times per stage
#   bench   benchmarks/train_throughput.py 1B, micro batch 16: padded and packed, tokens/s, MFU
#   liger   the same, packed, with Liger's kernels       bench4  micro batch 4 (the default)
#   gputest python -m pytest -m gpu tests/test_gpu.py
set -o pipefail
ROOT=$PWD
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$ROOT/.gpu/repo PYTHONUNBUFFERED=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
mkdir -p /tmp/data && for f in .gpu/data/*.gz; do gunzip -c "$f" > /tmp/data/$(basename "$f" .gz); done
export LION_SHARED_DATA=/tmp/data
echo "install: $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
nproc; free -g | head -2
python3 - <<'PY'
import importlib.metadata as md, sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "deepspeed", "prefect", "pydantic", "openai", "triton",
             "liger-kernel", "accelerate", "tokenizers", "huggingface-hub"):
    try:
        print(f"  {name} {md.version(name)}")
    except Exception as e:
        print(f"  {name}: {e}")
try:
    import torch
    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, "SMs, cuda", torch.version.cuda)
except Exception as e:
    print("no CUDA device:", e)
PY
cd .gpu/repo
stage() {  # name, limit (s), command...
  local name=$1 lim=$2; shift 2
  echo "=== $name (limit ${lim}s) start $(date +%T)"
  local s=$(date +%s)
  timeout -k 10 "$lim" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $(( $(date +%s) - s )) s"
  grep -v "^\[20..-..-..\|^ *$" "$OUT/$name.log" | tail -n 45
}
for what in "$@"; do case $what in
  round) stage round 250 python3 benchmarks/gpu_round.py --max-steps 20 --json "$OUT/round.json" ;;
  bench) stage bench16 170 python3 benchmarks/train_throughput.py --device cuda --model-size 1b \
           --micro-batch 16 --steps 10 --records 3000 --json "$OUT/bench16.json" ;;
  liger) stage liger16 100 python3 benchmarks/train_throughput.py --device cuda --model-size 1b \
           --micro-batch 16 --steps 10 --records 3000 --layout packed --liger --json "$OUT/liger16.json" ;;
  bench4) stage bench4 150 python3 benchmarks/train_throughput.py --device cuda --model-size 1b \
           --micro-batch 4 --steps 10 --records 3000 --json "$OUT/bench4.json" ;;
  gputest) stage gputest 300 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -x ;;
esac; done
echo "total: $(( $(date +%s) - T0 )) s"
