#!/usr/bin/env python3
"""Build a torch-cluster wheel holding only the ``radius`` operator (all mpnn_ip uses), fast.

Compiling all of torch-cluster 1.6.3 for CUDA takes more than 10 minutes; its radius operator alone
(``csrc/radius.cpp`` with its CPU and CUDA sources, plus ``version.cpp``) takes a couple. This
script unpacks the sdist (default: ``.wheels/torch_cluster-1.6.3.tar.gz``, fetched by
``scripts/gpu_wheels.sh``), trims it to those sources, makes ``torch_cluster/__init__.py`` load only
``_version`` and ``_radius``, switches the build to ninja, and runs
``pip wheel --no-build-isolation --no-deps`` with the python that runs this script (its torch):

- CUDA mode (a CUDA torch that sees a GPU and nvcc): ``FORCE_ONLY_CUDA=1 FORCE_CUDA=1`` for the local
  architecture (``TORCH_CUDA_ARCH_LIST`` from ``torch.cuda.get_device_capability()`` unless set);
  the wheel's version is ``1.6.3+radius.smXY``. Its operator also runs on CPU tensors.
- CPU mode (``--cpu``, or no CUDA): ``FORCE_ONLY_CPU=1``; version ``1.6.3+radius.cpu``.

MAX_JOBS defaults to all cores. The wheel is copied to OUT_DIR (default ``.wheels/``).

    python scripts/build_torch_cluster_radius.py [OUT_DIR] [--sdist PATH] [--cpu] [--trim-only DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OP = "radius"

INIT_PY = """import importlib.machinery
import os.path as osp

import torch

__version__ = '{version}'

# Trimmed build (mpnn_ip scripts/build_torch_cluster_radius.py): only the radius operator.
for library in ['_version', '_{op}']:
    cuda_spec = importlib.machinery.PathFinder().find_spec(
        f'{{library}}_cuda', [osp.dirname(__file__)])
    cpu_spec = importlib.machinery.PathFinder().find_spec(
        f'{{library}}_cpu', [osp.dirname(__file__)])
    spec = cuda_spec or cpu_spec
    if spec is not None:
        torch.ops.load_library(spec.origin)
    else:  # pragma: no cover
        raise ImportError(f"Could not find module '{{library}}_cpu' in "
                          f"{{osp.dirname(__file__)}}")

cuda_version = torch.ops.torch_cluster.cuda_version()
if torch.version.cuda is not None and cuda_version != -1:  # pragma: no cover
    if cuda_version < 10000:
        major = int(str(cuda_version)[0])
    else:
        major = int(str(cuda_version)[0:2])
    t_major = int(torch.version.cuda.split('.')[0])
    if t_major != major:
        raise RuntimeError(
            f'PyTorch has CUDA {{torch.version.cuda}} but torch_cluster was built with '
            f'CUDA {{cuda_version}}: rebuild it with scripts/build_torch_cluster_radius.py')

from .radius import radius, radius_graph  # noqa

__all__ = ['radius', 'radius_graph', '__version__']
"""


def trim(src: Path, op: str = OP) -> None:
    """Trim an unpacked torch-cluster sdist in place to the ``op`` operator (and ``version``)."""
    src = Path(src)
    keep_py = {"__init__.py", f"{op}.py", "typing.py", "testing.py"}
    for name in ["test", ".github", "conda", "cmake", "CMakeLists.txt", "torch_cluster.egg-info"]:
        path = src / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    csrc = src / "csrc"
    for path in list(csrc.glob("*.cpp")):
        if path.stem not in (op, "version"):
            path.unlink()
    for path in list((csrc / "cpu").glob("*.cpp")):
        if path.stem != f"{op}_cpu":
            path.unlink()
    for path in list((csrc / "cuda").glob("*.cu")):
        if path.stem != f"{op}_cuda":
            path.unlink()
    pkg = src / "torch_cluster"
    for path in list(pkg.glob("*.py")):
        if path.name not in keep_py:
            path.unlink()
    (pkg / "__init__.py").write_text(INIT_PY.format(version="1.6.3", op=op))
    setup = src / "setup.py"
    text = setup.read_text()
    text = text.replace("use_ninja=False", "use_ninja=True")  # parallel compiles (MAX_JOBS)
    setup.write_text(text)


def set_version(src: Path, local: str) -> None:
    """Give the built wheel a local version label, e.g. ``1.6.3+radius.sm90``."""
    setup = Path(src) / "setup.py"
    text = setup.read_text()
    text = text.replace("__version__ = '1.6.3'", f"__version__ = '1.6.3+{local}'", 1)
    setup.write_text(text)


def find_sdist() -> Path:
    found = sorted(glob.glob(str(REPO / ".wheels" / "torch_cluster-*.tar.gz")))
    if not found:
        sys.exit("no .wheels/torch_cluster-*.tar.gz: run scripts/gpu_wheels.sh where PyPI is reachable")
    return Path(found[-1])


def unpack(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tar:
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # Python < 3.10.12
            tar.extractall(dest)
    (top,) = [p for p in dest.iterdir() if p.is_dir()]
    return top


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", default=str(REPO / ".wheels"))
    parser.add_argument("--sdist", default=None, help="torch-cluster sdist (default .wheels/torch_cluster-*.tar.gz)")
    parser.add_argument("--cpu", action="store_true", help="build the CPU operator only")
    parser.add_argument("--trim-only", metavar="DIR", help="unpack and trim into DIR, build nothing")
    args = parser.parse_args(argv)

    sdist = Path(args.sdist) if args.sdist else find_sdist()
    if args.trim_only:
        dest = Path(args.trim_only)
        dest.mkdir(parents=True, exist_ok=True)
        top = unpack(sdist, dest)
        trim(top)
        print(top)
        return 0

    import torch

    env = dict(os.environ)
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    cuda = not args.cpu and torch.version.cuda is not None and torch.cuda.is_available()
    if cuda:
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME is None:
            print("no CUDA_HOME / nvcc found: building the CPU operator only", flush=True)
            cuda = False
    if cuda:
        if "TORCH_CUDA_ARCH_LIST" not in env:
            major, minor = torch.cuda.get_device_capability()
            env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        arch = env["TORCH_CUDA_ARCH_LIST"].split(";")[0].split()[0].replace(".", "").replace("+PTX", "")
        env.update(FORCE_CUDA="1", FORCE_ONLY_CUDA="1")
        env.pop("FORCE_ONLY_CPU", None)
        local = f"radius.sm{arch}"
    else:
        env.update(FORCE_ONLY_CPU="1")
        env.pop("FORCE_ONLY_CUDA", None)
        env.pop("FORCE_CUDA", None)
        local = "radius.cpu"

    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tc_radius_") as tmp:
        top = unpack(sdist, Path(tmp) / "src")
        trim(top)
        set_version(top, local)
        wheel_dir = Path(tmp) / "wheel"
        print(
            f"building torch_cluster 1.6.3+{local} (MAX_JOBS={env['MAX_JOBS']}, "
            f"TORCH_CUDA_ARCH_LIST={env.get('TORCH_CUDA_ARCH_LIST', '-') if cuda else '-'}, "
            f"torch {torch.__version__})",
            flush=True,
        )
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--disable-pip-version-check",
                "--no-build-isolation",
                "--no-deps",
                "-w",
                str(wheel_dir),
                str(top),
            ],
            env=env,
            check=True,
        )
        print(f"built in {time.perf_counter() - start:.0f} s", flush=True)
        (wheel,) = list(wheel_dir.glob("torch_cluster-*.whl"))
        shutil.copy2(wheel, out_dir / wheel.name)
        print(out_dir / wheel.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
