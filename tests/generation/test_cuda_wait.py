"""cuda_wait: the primary context's scheduling flag, set through the driver API.

On the CPU machine the driver is replaced by a fake that keeps the state a real driver keeps
(flags and whether the context exists; a driver that refuses changes once the context exists),
so the logic is checked; on a GPU a fresh process per mode measures what the flag is for: the
CPU time a thread spends waiting for a long kernel.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dcnn_flame.generation import cuda_wait as cw


class FakeDriver:
    """The five driver calls cuda_wait makes, on one device with a primary context."""

    def __init__(self, flags: int = 0, active: bool = False, refuse_when_active: bool = True, devices: int = 1):
        self.flags, self.active, self.refuse, self.devices = flags, active, refuse_when_active, devices
        self.set_calls = []

    def cuInit(self, flags):
        return 0

    def cuDeviceGet(self, ptr, ordinal):
        if ordinal >= self.devices:
            return 101  # CUDA_ERROR_INVALID_DEVICE
        ptr._obj.value = ordinal
        return 0

    def cuDevicePrimaryCtxGetState(self, dev, flags_ptr, active_ptr):
        flags_ptr._obj.value, active_ptr._obj.value = self.flags, int(self.active)
        return 0

    def cuDevicePrimaryCtxSetFlags_v2(self, dev, flags):
        self.set_calls.append(flags.value)
        if self.active and self.refuse:
            return 708  # CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE
        self.flags = flags.value
        return 0


def test_sets_the_scheduling_bits_and_keeps_the_others(monkeypatch):
    fake = FakeDriver(flags=0x8 | 0x1)  # CU_CTX_MAP_HOST kept, spin replaced
    monkeypatch.setattr(cw, "_driver", lambda: fake)
    assert cw.set_cuda_wait("blocking", 0) is None
    assert fake.flags == 0x8 | 0x4 and cw.primary_context_flags(0) == (0xC, False)
    assert cw.set_cuda_wait("blocking", 0) is None and len(fake.set_calls) == 1  # already so: no call
    assert cw.set_cuda_wait("yield", 0) is None and fake.flags == 0x8 | 0x2


def test_reports_instead_of_raising_when_it_cannot_set_the_flag(monkeypatch):
    fake = FakeDriver(flags=0, active=True)
    monkeypatch.setattr(cw, "_driver", lambda: fake)
    msg = cw.set_cuda_wait("blocking", 0)
    assert "already created" in msg and "answered 708" in msg and "before the process's first CUDA call" in msg
    assert fake.flags == 0
    # A driver that accepts the change on a live context: done.
    fake.refuse = False
    assert cw.set_cuda_wait("spin", 0) is None and fake.flags == 0x1
    # No such device, no driver at all: a reason, nothing raised.
    assert "cuDeviceGet(3) returned CUDA error 101" in cw.set_cuda_wait("blocking", 3)

    def no_driver():
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(cw, "_driver", no_driver)
    assert "libcuda.so.1: cannot open" in cw.set_cuda_wait("blocking", 0)


def test_auto_touches_nothing_and_unknown_modes_are_refused(monkeypatch):
    def boom():
        raise AssertionError("the driver must not be loaded for auto")

    monkeypatch.setattr(cw, "_driver", boom)
    assert cw.set_cuda_wait("auto", 0) is None
    with pytest.raises(ValueError, match="cuda_wait must be one of blocking, spin, yield, auto, got 'sleep'"):
        cw.set_cuda_wait("sleep", 0)


def test_the_ctypes_calls_match_the_driver_signatures():
    """The fake mirrors the real calls: every function cuda_wait looks up exists in the CUDA
    driver's API under that name (checked against the real library where there is one)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        pytest.skip("no CUDA driver library on this machine")
    for name in ("cuInit", "cuDeviceGet", "cuDevicePrimaryCtxGetState", "cuDevicePrimaryCtxSetFlags_v2"):
        assert hasattr(lib, name)


_WAIT_SCRIPT = textwrap.dedent("""
    import json, sys, time, torch
    from dcnn_flame.generation.cuda_wait import primary_context_flags, set_cuda_wait
    problem = set_cuda_wait(sys.argv[1], 0)
    x = torch.zeros(1, device="cuda"); torch.cuda.synchronize()  # the context exists now
    torch.cuda._sleep(1_000_000); torch.cuda.synchronize()
    cycles, waits = 50_000_000, []
    while True:  # about 0.4 s of GPU sleep
        t = time.perf_counter(); torch.cuda._sleep(cycles); torch.cuda.synchronize()
        if time.perf_counter() - t > 0.3:
            break
        cycles *= 2
    for _ in range(3):
        torch.cuda._sleep(cycles)
        c, t = time.process_time(), time.perf_counter()
        torch.cuda.synchronize()
        waits.append((time.process_time() - c, time.perf_counter() - t))
    print(json.dumps({"problem": problem, "flags": primary_context_flags(0)[0], "waits": waits}))
""")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_blocking_wait_sleeps_and_a_spinning_one_burns_its_core():
    import json

    res = {}
    for mode in ("blocking", "spin"):
        out = subprocess.run([sys.executable, "-c", _WAIT_SCRIPT, mode], capture_output=True, text=True,
                             timeout=300, env=dict(os.environ))
        assert out.returncode == 0, out.stderr
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["blocking"]["problem"] is None and res["blocking"]["flags"] & 0x7 == 0x4
    assert res["spin"]["problem"] is None and res["spin"]["flags"] & 0x7 == 0x1
    for cpu, wall in res["blocking"]["waits"]:
        assert wall > 0.2 and cpu < 0.2 * wall, res
    for cpu, wall in res["spin"]["waits"]:
        assert wall > 0.2 and cpu > 0.7 * wall, res
