#!/bin/bash
# Fills .wheels/ (ignored by git) with what the offline GPU machine lacks, for its Python 3.12 on
# x86_64 Linux: ASE, hydra-core, omegaconf, antlr4 (built into a wheel here), the peers (nequip,
# mace-torch with their small dependencies, openequivariance repacked as a pure wheel, vesin,
# vesin-torch) and the torch-cluster source that scripts/build_torch_cluster_radius.sh builds there.
# mace-torch pins e3nn 0.4.4 while nequip and mpnn_ip use e3nn 0.6: that e3nn goes to .wheels/mace/
# and is installed into a separate target for the MACE runs only.
# Run it where PyPI is reachable; it skips files already present.  Fails if .wheels/ passes 60 MiB
# (the device tool carries at most 64 MiB with the working tree).
#   Usage: bash scripts/gpu_wheels.sh            (WHEELS_DIR and PYTHON override the defaults)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
W=${WHEELS_DIR:-$here/.wheels}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$here/.venv/bin/python" ]; then PYTHON=$here/.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$W/mace"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
plat=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform linux_x86_64 --platform any)

have() { compgen -G "$1" >/dev/null; }  # a glob matches an existing file

# wheel SPEC GLOB [DIR]: a binary wheel for cp312 / x86_64 (or pure) unless GLOB already matches
wheel() {
  local dir=${3:-$W}
  if have "$dir/$2"; then echo "have  $2"; return; fi
  echo "fetch $1"
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: "${plat[@]}" -d "$dir" "$1"
}

# sdist SPEC GLOB: the source archive
sdist() {
  if have "$W/$2"; then echo "have  $2"; return; fi
  echo "fetch $1 (source)"
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary=:all: --no-build-isolation -d "$W" "$1"
}

# built SPEC GLOB: a source-only package built into a pure wheel here
built() {
  if have "$W/$2"; then echo "have  $2"; return; fi
  echo "build $1"
  "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -w "$W" "$1"
}

# Needed by mpnn_ip itself (and its tests / scripts)
wheel "ase==3.29.0"                    "ase-3.29.0-*.whl"
wheel "hydra-core==1.3.8"              "hydra_core-1.3.8-*.whl"
wheel "omegaconf>=2.2,<2.4"            "omegaconf-2.3*.whl"
built "antlr4-python3-runtime==4.9.3"  "antlr4_python3_runtime-4.9.3-*.whl"
sdist "torch-cluster==1.6.3"           "torch_cluster-1.6.3.tar.gz"
# The peers and their dependencies that the GPU image lacks (numpy, scipy, h5py, pandas, pyyaml,
# requests, tqdm, torchmetrics, lightning, e3nn 0.6, jinja2, ninja, pybind11 are in the image)
wheel "nequip==0.19.1"                 "nequip-0.19.1-*.whl"
wheel "mace-torch==0.3.16"             "mace_torch-0.3.16-*.whl"
wheel "matscipy==1.3.1"                "matscipy-1.3.1-*.whl"
wheel "lmdb"                           "lmdb-*.whl"
wheel "orjson"                         "orjson-*.whl"
wheel "torch-ema"                      "torch_ema-*.whl"
wheel "prettytable"                    "prettytable-*.whl"
wheel "wcwidth"                        "wcwidth-*.whl"
wheel "configargparse"                 "[cC]onfig[aA]rg[pP]arse-*.whl"
wheel "gitpython"                      "[gG]it[pP]ython-*.whl"
wheel "gitdb"                          "gitdb-*.whl"
wheel "smmap"                          "smmap-*.whl"
if ! have "$W/python_hostlist-*.whl"; then  # source only on PyPI: build it here
  wheel "python-hostlist" "python_hostlist-*.whl" 2>/dev/null || built "python-hostlist" "python_hostlist-*.whl"
fi
wheel "vesin==0.6.2"                   "vesin-0.6.2-*.whl"
wheel "vesin-torch==0.6.2"             "vesin_torch-0.6.2-*.whl"
wheel "e3nn==0.4.4"                    "e3nn-0.4.4-*.whl" "$W/mace"

# openequivariance: its sdist builds an optional nanobind extension with CMake, which downloads
# LibTorch (impossible offline, and not needed: the PyTorch path JIT-compiles its kernels with
# torch.utils.cpp_extension and the machine's nvcc). Repack its sources as a pure wheel.
if have "$W/openequivariance-0.7.0-*.whl"; then
  echo "have  openequivariance-0.7.0-*.whl"
else
  echo "build openequivariance==0.7.0 (repacked as a pure wheel)"
  "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary=:all: \
    -d "$tmp" "openequivariance==0.7.0"
  tar -xzf "$tmp"/openequivariance-0.7.0.tar.gz -C "$tmp"
  src=$tmp/openequivariance-0.7.0
  "$PYTHON" - "$src/pyproject.toml" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r"\[build-system\]\n(?:(?!\[).*\n)*",
              '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n', text, count=1)
text += '\n[tool.setuptools.package-data]\n"*" = ["*.cuh", "*.jinja", "*.cpp", "*.hpp", "*.txt", "**/*.cuh", "**/*.cpp", "**/*.hpp", "**/*.txt"]\n'
open(path, "w").write(text)
EOF
  rm -f "$src/CMakeLists.txt"
  "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$W" "$src"
fi

echo "--- $W"
(cd "$W" && ls -l ./*.whl ./*.tar.gz mace/*.whl 2>/dev/null | awk '{printf "%9d  %s\n", $5, $NF}')
total=$(du -sb "$W" | cut -f1)
echo "total: $total bytes ($((total / 1048576)) MiB)"
if [ "$total" -gt $((60 * 1048576)) ]; then
  echo "ERROR: .wheels/ is over 60 MiB: the device tool carries at most 64 MiB with the working tree" >&2
  exit 1
fi
