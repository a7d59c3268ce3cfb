"""glibc keeps our large tensor buffers in its heap: repeated allocations stop page-faulting."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from mpnn_ip.cpu_allocator import user_chose_malloc_settings

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)

# Fills a fresh 64 MiB tensor fifteen times and counts the minor page faults of the last nine
# (glibc's heap settles after a few rounds; with its defaults every round maps fresh pages).
FAULTS_OF_REPEATED_ALLOCATIONS = """
import json, resource, sys
import torch
from mpnn_ip.cpu_allocator import keep_tensor_buffers_in_heap
applied = keep_tensor_buffers_in_heap() if sys.argv[1] == "tuned" else False
for _ in range(6):
    torch.ones(2**24).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    torch.ones(2**24).sum()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_ALLOCATIONS, mode], env={**environ, **env},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_users_own_malloc_settings_are_recognised():
    assert not user_chose_malloc_settings({})
    assert user_chose_malloc_settings({"MALLOC_MMAP_THRESHOLD_": "65536"})
    assert user_chose_malloc_settings({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert user_chose_malloc_settings({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"})
    assert not user_chose_malloc_settings({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX"})


@glibc_only
def test_repeated_large_allocations_reuse_heap_pages_once_tuned():
    default, tuned = _faults("default"), _faults("tuned")
    assert tuned["applied"] is True
    # 9 x 64 MiB of fresh pages is ~147k faults of 4 KiB with glibc's defaults (fewer with huge pages)
    assert default["faults"] > 1000
    assert tuned["faults"] < default["faults"] / 10


@glibc_only
def test_users_malloc_settings_are_left_alone():
    assert _faults("tuned", MALLOC_MMAP_THRESHOLD_="131072")["applied"] is False
