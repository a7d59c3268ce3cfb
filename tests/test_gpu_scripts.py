"""Cheap CPU checks of the GPU set-up scripts: shell syntax, and the torch-cluster trimming on a fake sdist."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.parametrize("name", ["gpu_wheels.sh", "gpu_check.sh"])
def test_shell_scripts_parse(name):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    subprocess.run(["bash", "-n", str(SCRIPTS / name)], check=True)


def _builder():
    spec = importlib.util.spec_from_file_location("build_tc_radius", SCRIPTS / "build_torch_cluster_radius.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_sdist(root: Path) -> Path:
    top = root / "torch_cluster-1.6.3"
    files = [
        "setup.py",
        "setup.cfg",
        "LICENSE",
        "CMakeLists.txt",
        "test/test_radius.py",
        ".github/x.yml",
        "torch_cluster.egg-info/SOURCES.txt",
        "csrc/extensions.h",
        "csrc/macros.h",
        "csrc/cluster.h",
        "csrc/cpu/utils.h",
        "csrc/cpu/utils/nanoflann.hpp",
        "csrc/cuda/utils.cuh",
    ]
    for op in ["radius", "knn", "fps", "grid"]:
        files += [
            f"csrc/{op}.cpp",
            f"csrc/cpu/{op}_cpu.cpp",
            f"csrc/cpu/{op}_cpu.h",
            f"csrc/cuda/{op}_cuda.cu",
            f"csrc/cuda/{op}_cuda.h",
            f"torch_cluster/{op}.py",
        ]
    files += ["csrc/version.cpp", "torch_cluster/__init__.py", "torch_cluster/typing.py", "torch_cluster/testing.py"]
    for f in files:
        (top / f).parent.mkdir(parents=True, exist_ok=True)
        (top / f).write_text("x\n")
    (top / "setup.py").write_text(
        "__version__ = '1.6.3'\nBuildExtension.with_options(no_python_abi_suffix=True, use_ninja=False)\n"
    )
    return top


def test_trim_keeps_only_radius_and_version(tmp_path):
    builder = _builder()
    top = _fake_sdist(tmp_path / "src")
    builder.trim(top)
    sources = sorted(str(p.relative_to(top)) for p in top.rglob("*") if p.suffix in (".cpp", ".cu"))
    assert sources == ["csrc/cpu/radius_cpu.cpp", "csrc/cuda/radius_cuda.cu", "csrc/radius.cpp", "csrc/version.cpp"]
    assert (top / "csrc/cpu/utils/nanoflann.hpp").exists() and (top / "csrc/cuda/utils.cuh").exists()
    assert sorted(p.name for p in (top / "torch_cluster").glob("*.py")) == [
        "__init__.py",
        "radius.py",
        "testing.py",
        "typing.py",
    ]
    init = (top / "torch_cluster/__init__.py").read_text()
    assert "['_version', '_radius']" in init and "from .radius import radius, radius_graph" in init
    compile(init, "__init__.py", "exec")
    assert "use_ninja=True" in (top / "setup.py").read_text()
    for gone in ["test", ".github", "CMakeLists.txt", "torch_cluster.egg-info"]:
        assert not (top / gone).exists()
    builder.set_version(top, "radius.sm90")
    assert "__version__ = '1.6.3+radius.sm90'" in (top / "setup.py").read_text()


def test_trim_only_from_sdist(tmp_path):
    builder = _builder()
    top = _fake_sdist(tmp_path / "src")
    sdist = tmp_path / "torch_cluster-1.6.3.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    assert builder.main(["--sdist", str(sdist), "--trim-only", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "torch_cluster-1.6.3"
    assert not (out / "csrc/knn.cpp").exists() and (out / "csrc/radius.cpp").exists()
