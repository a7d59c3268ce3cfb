#!/bin/bash
# GPU checks in one short run (needs CUDA torch, torch-cluster built for CUDA, and this package importable):
#   CUDA tests (radius graph and every model = CPU in float64, training-step gradients, calculator),
#   the speed/memory benchmark on the GPU, the radius graph with and without spatial blocks, and a
#   3-epoch quickstart training with trainer=gpu.  Usage: bash scripts/gpu_check.sh [OUTPUT_DIR]
set -u
out=${1:-gpu_check}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -m pytest -q -p no:cacheprovider "$here/tests/test_cuda.py" "$here/tests/test_graph.py" -k "cuda or CUDA" 2>&1 | tail -15
python "$here/scripts/benchmark.py" --device cuda --out "$out/bench_gpu.jsonl" 2>&1 | grep -v '^{'
for blocks in 0 1000000000; do  # always / never split frames into spatial blocks
  python "$here/scripts/benchmark_graph.py" --device cuda --sizes 16384 65536 262144 --skip-reference \
    --block-min-points "$blocks" 2>&1 | tail -6
done
(cd "$out" && python -m mpnn_ip.cli.train experiment=quickstart trainer=gpu logger=csv trainer.max_epochs=3 \
   trainer.enable_progress_bar=false hydra.run.dir="$PWD/quickstart_gpu" 2>&1 | tail -12)
