"""Keep large tensor buffers in glibc's heap, so that CPU runs stop paying page faults per call.

PyTorch's CPU allocator is plain ``malloc``. glibc serves every block above its mmap threshold
(128 KiB, rising to at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, so a model
that allocates the same per-edge tensors (tens of MB each) at every call touches new zero pages
every time: one page fault per 4 KiB, which makes writing into a fresh tensor several times
slower than into a reused one and a whole energy+forces call markedly slower (measurements:
docs/performance.md, "Why the defaults are what they are", CPU allocator).

:func:`keep_tensor_buffers_in_heap` raises the mmap threshold to 1 GiB and the trim threshold to
2 GiB (``mallopt``), which is what ``MALLOC_MMAP_THRESHOLD_=1073741824
MALLOC_TRIM_THRESHOLD_=2147483647`` do at start-up. Freed memory is then reused by the next
call instead of being returned to the system, so the process's resident size stays near its peak.
Our command-line tools, :class:`~mpnn_ip.calculators.MPNNCalculator` and the TorchSim model call
it; a script that trains or evaluates through other entry points can call it itself. It does nothing
where the C library is not glibc, and where the user already chose glibc's malloc settings
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, or ``glibc.malloc`` in ``GLIBC_TUNABLES``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

#: Blocks up to this many bytes come from the heap (glibc's ``M_MMAP_THRESHOLD``).
MMAP_THRESHOLD_BYTES = 2**30
#: Free memory at the top of the heap kept for reuse (glibc's ``M_TRIM_THRESHOLD``; at most 2^31 - 1).
TRIM_THRESHOLD_BYTES = 2**31 - 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h

_applied: bool | None = None


def user_chose_malloc_settings(environ=os.environ) -> bool:
    """True when glibc's malloc is already configured through its own environment variables."""
    return (
        "MALLOC_MMAP_THRESHOLD_" in environ
        or "MALLOC_TRIM_THRESHOLD_" in environ
        or "glibc.malloc" in environ.get("GLIBC_TUNABLES", "")
    )


def keep_tensor_buffers_in_heap() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are (now) raised.

    False on other C libraries and platforms, and when the user configured malloc themselves.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc" or user_chose_malloc_settings():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        )
    except (OSError, AttributeError) as error:
        log.debug("mallopt unavailable (%s): glibc's malloc settings unchanged", error)
    if _applied:
        log.debug(
            "glibc malloc: blocks up to %d bytes from the heap, trim above %d bytes",
            MMAP_THRESHOLD_BYTES,
            TRIM_THRESHOLD_BYTES,
        )
    return _applied
