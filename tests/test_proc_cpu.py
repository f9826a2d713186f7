"""benchmarks/proc_cpu.py: the per-process CPU and memory sampler behind bm_generate's
--cpu-by-process and --memory, checked against a child process that allocates a known amount."""
from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
proc_cpu = pytest.importorskip("proc_cpu")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

MB = 1_000_000
#: The child's own allocation (written to, so every page is resident and private).
CHILD_BYTES = 120 * MB
CHILD = ("import sys, time\n"
         f"b = b'\\x01' * {CHILD_BYTES}\n"
         "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
         "t = time.process_time()\n"
         "while time.process_time() - t < 0.4: pass\n"  # 0.4 s of CPU after the allocation
         "time.sleep(0.3)\n")


def test_a_childs_memory_and_cpu_are_seen_under_its_group():
    with proc_cpu.ProcessCpu(interval=0.05) as p:
        before = time.time()
        time.sleep(0.15)
        # a name of its own, so that no other process of this user falls into its group
        child = subprocess.Popen(["dcnn-probe-child", "-c", CHILD], executable=sys.executable,
                                 stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\n"
        during = time.time() + 0.2
        child.wait(timeout=30)
    group = p.label_of(child.pid)
    assert group == "other: dcnn-probe-child"
    mem = p.memory_by_label()
    assert CHILD_BYTES <= mem[group]["private"] < CHILD_BYTES + 60 * MB
    assert mem[group]["resident"] >= mem[group]["private"]
    assert mem["all processes"]["resident"] >= CHILD_BYTES
    at_before, at_during = p.private_in(group, [(before - 0.1, before), (during - 0.1, during + 0.1)])
    assert math.isnan(at_before)  # no process of the group was alive yet
    assert CHILD_BYTES <= at_during < CHILD_BYTES + 60 * MB
    cpu_s, processes = p.by_label()[group]
    assert processes >= 1 and 0.35 <= cpu_s < 5.0
    # the driver is its own group and is not counted as the child
    assert p.label_of(p.driver) == "driver (this process)" != group
