#!/bin/bash
# GPU checks in one short run (needs CUDA torch, torch-cluster built for CUDA, and this package importable):
#   CUDA tests (radius graph and every model = CPU in float64, training-step gradients, calculator),
#   the speed/memory benchmark on the GPU, the radius graph with and without spatial blocks, and a
#   3-epoch quickstart training with trainer=gpu.  Usage: bash scripts/gpu_check.sh [OUTPUT_DIR]
# Offline set-up first (the GPU machine has no network): when torch_cluster, ase, hydra or omegaconf
# is missing, the wheels that scripts/gpu_wheels.sh put in .wheels/ are installed with
# `pip install --no-index --no-deps --target $SITE` (default /tmp/mpnn_site, put on PYTHONPATH with
# the repo), and torch-cluster's radius operator is built for the local GPU by
# scripts/build_torch_cluster_radius.py unless a built .wheels/torch_cluster-*+radius.sm*-cp312-*.whl
# is there; a fresh build is copied into .wheels/ and, if $OUT is set (the device tool), into $OUT.
# e3nn 0.4.4 for mace-torch goes to $MACE_SITE (default /tmp/mace_site): MACE_PYTHONPATH holds it.
# Everything printed is also written to OUTPUT_DIR/results.txt, with the time of each phase.
set -u
out=${1:-gpu_check}
mkdir -p "$out"
out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
W=$here/.wheels
SITE=${SITE:-/tmp/mpnn_site}
MACE_SITE=${MACE_SITE:-/tmp/mace_site}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
exec > >(tee "$out/results.txt") 2>&1
tee_pid=$!

start=$SECONDS
last=$SECONDS
phases=()
tick() {  # tick NAME: end of a phase; print and remember its time
  local t=$((SECONDS - last))
  last=$SECONDS
  phases+=("$(printf '%-34s %5d s' "$1" "$t")")
  echo "--- $1: $t s (total $((SECONDS - start)) s)"
}

# --- offline set-up -------------------------------------------------------------------------------
pipi() { "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --upgrade --root-user-action=ignore "$@"; }
mkdir -p "$SITE"
export PYTHONPATH=$here:$SITE${PYTHONPATH:+:$PYTHONPATH}
if ! "$PY" -c "import ase, hydra, omegaconf" 2>/dev/null; then
  wheels=()
  for f in "$W"/*.whl; do
    case $(basename "$f") in torch_cluster-*) ;; *) [ -f "$f" ] && wheels+=("$f") ;; esac
  done
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "ERROR: no wheels in $W: run scripts/gpu_wheels.sh where PyPI is reachable and carry .wheels" >&2
  else
    echo "installing ${#wheels[@]} wheels from $W into $SITE"
    pipi --target "$SITE" "${wheels[@]}"
  fi
  if compgen -G "$W/mace/*.whl" >/dev/null; then
    mkdir -p "$MACE_SITE"
    pipi --target "$MACE_SITE" "$W"/mace/*.whl
  fi
fi
export MACE_PYTHONPATH=$MACE_SITE:$PYTHONPATH
tick "install wheels"

if ! "$PY" -c "import torch_cluster" 2>/dev/null; then
  whl=$(ls "$W"/torch_cluster-*+radius.sm*-cp312-*.whl 2>/dev/null | tail -1)
  if [ -z "$whl" ]; then
    "$PY" "$here/scripts/build_torch_cluster_radius.py" "$W"
    whl=$(ls -t "$W"/torch_cluster-*+radius.*.whl 2>/dev/null | head -1)
    if [ -n "$whl" ] && [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then cp "$whl" "$OUT/"; fi
  else
    echo "reusing $whl"
  fi
  if [ -n "$whl" ]; then pipi --target "$SITE" "$whl"; fi
fi
"$PY" -c "import torch, torch_cluster; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  torch.cuda.is_available(), '| torch_cluster', torch_cluster.__version__, torch_cluster.__file__)"
tick "torch-cluster radius"

# --- the checks -----------------------------------------------------------------------------------
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -m pytest -q -p no:cacheprovider "$here/tests/test_cuda.py" "$here/tests/test_graph.py" -k "cuda or CUDA" 2>&1 | tail -15
tick "CUDA tests"
"$PY" "$here/scripts/benchmark.py" --device cuda --out "$out/bench_gpu.jsonl" 2>&1 | grep -v '^{'
tick "benchmark.py --device cuda"
for blocks in 0 1000000000; do  # always / never split frames into spatial blocks
  "$PY" "$here/scripts/benchmark_graph.py" --device cuda --sizes 16384 65536 262144 --skip-reference \
    --block-min-points "$blocks" 2>&1 | tail -6
done
tick "benchmark_graph.py blocks on/off"
(cd "$out" && "$PY" -m mpnn_ip.cli.train experiment=quickstart trainer=gpu logger=csv trainer.max_epochs=3 \
   trainer.enable_progress_bar=false hydra.run.dir="$PWD/quickstart_gpu" 2>&1 | tail -12)
tick "quickstart trainer=gpu (3 epochs)"

echo "=== phase times"
printf '%s\n' "${phases[@]}"
echo "total: $((SECONDS - start)) s; results in $out/results.txt"
exec >&- 2>&-
wait "$tee_pid" 2>/dev/null || true
