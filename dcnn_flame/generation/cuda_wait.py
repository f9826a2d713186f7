"""How a process's CPU thread waits for its GPU: spin on a core, or sleep until woken.

By default the CUDA driver spins (polls in a busy loop) whenever a thread waits for the GPU
(a synchronisation, a copy to the host, ``.item()``) as long as a process has fewer contexts
than the machine has cores. Twelve reconstruction actors sharing one GPU each spend their waits
spinning on a core that the decode tasks and the write threads need: on the 16-core H200
machine (10th session, docs/generation.md) making the waits block cut the busy cores from 80 %
to 67 % at the same job rate. This module sets the scheduling flag of a device's primary
context (the one PyTorch uses) through the CUDA driver API, before the context is created:

- ``"blocking"``: ``CU_CTX_SCHED_BLOCKING_SYNC``, the thread sleeps on an OS primitive;
- ``"spin"``: ``CU_CTX_SCHED_SPIN``; ``"yield"``: ``CU_CTX_SCHED_YIELD`` (spins, yielding);
- ``"auto"``: leave the driver's default alone (the call does nothing).

It only loads ``libcuda`` (the driver PyTorch itself uses) with ctypes; without a driver or a
GPU it reports why and changes nothing.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Optional

CUDA_WAIT_MODES = ("blocking", "spin", "yield", "auto")
_FLAGS = {"spin": 0x1, "yield": 0x2, "blocking": 0x4}
_SCHED_MASK = 0x7


def _driver() -> ctypes.CDLL:
    return ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")


def primary_context_flags(device_index: int) -> tuple[int, bool]:
    """(flags, active) of the primary context of CUDA device ``device_index`` (numbered as
    this process sees them, i.e. after ``CUDA_VISIBLE_DEVICES``). Raises OSError/RuntimeError
    without a driver or device."""
    lib = _driver()
    _check(lib.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    _check(lib.cuDeviceGet(ctypes.byref(dev), int(device_index)), f"cuDeviceGet({device_index})")
    flags, active = ctypes.c_uint(), ctypes.c_int()
    _check(lib.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active)),
           "cuDevicePrimaryCtxGetState")
    return int(flags.value), bool(active.value)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} returned CUDA error {rc}")


def set_cuda_wait(mode: str, device_index: int = 0) -> Optional[str]:
    """Make waits for CUDA device ``device_index`` spin, yield or block (see the module).

    Call it before the process's first CUDA work on that device (PyTorch creates the primary
    context then). Returns None when the flag is in place (or ``mode="auto"``), else a sentence
    saying why not (no driver, no such device, the context already created with other flags):
    the caller logs it and goes on, the process just keeps the driver's default.

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in CUDA_WAIT_MODES:
        raise ValueError(f"cuda_wait must be one of {', '.join(CUDA_WAIT_MODES)}, got {mode!r}")
    if mode == "auto":
        return None
    want = _FLAGS[mode]
    try:
        lib = _driver()
        flags, active = primary_context_flags(device_index)
        if flags & _SCHED_MASK == want:
            return None
        dev = ctypes.c_int()
        _check(lib.cuDeviceGet(ctypes.byref(dev), int(device_index)), f"cuDeviceGet({device_index})")
        setter = getattr(lib, "cuDevicePrimaryCtxSetFlags_v2", None) or lib.cuDevicePrimaryCtxSetFlags
        rc = setter(dev, ctypes.c_uint((flags & ~_SCHED_MASK) | want))
        after, active = primary_context_flags(device_index)
    except (OSError, RuntimeError, AttributeError) as exc:
        return f"cuda_wait={mode} not set on CUDA device {device_index}: {exc}"
    if rc != 0 or after & _SCHED_MASK != want:
        state = "already created" if active else "not created yet"
        return (f"cuda_wait={mode} not set on CUDA device {device_index}: the driver answered {rc} and the "
                f"primary context ({state}) has scheduling flags {after & _SCHED_MASK:#x}; set it before the "
                f"process's first CUDA call")
    return None
