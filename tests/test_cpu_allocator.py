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

# Fills a fresh 64 MiB tensor in 30 rounds and prints the minor page faults of each round.
FAULTS_OF_REPEATED_ALLOCATIONS = """
import json, resource, sys
import torch
from mpnn_ip.cpu_allocator import keep_tensor_buffers_in_heap
applied = keep_tensor_buffers_in_heap() if sys.argv[1] == "tuned" else False
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(2**24).sum()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(mode: str, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_REPEATED_ALLOCATIONS, mode],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
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
    # a fresh 64 MiB is ~16k faults of 4 KiB: every round with glibc's defaults; once the heap
    # has grown (a few rounds, depending on the threads' allocations), none or nearly none when tuned
    assert sum(f > 1000 for f in default["faults"][15:]) >= 13
    assert sum(f > 1000 for f in tuned["faults"][15:]) <= 3


@glibc_only
def test_users_malloc_settings_are_left_alone():
    assert _faults("tuned", MALLOC_MMAP_THRESHOLD_="131072")["applied"] is False
