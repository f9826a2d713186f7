"""benchmarks/gpu_check.sh, the prepared device call: its commands parse, its layouts fit the
device machine, its limits fit the call, a failing step does not stop the others.

The script runs for real with ``PYTHON`` pointing at a recorder (every Python command it would
run is written down instead of run), so this needs no GPU and takes a second; the recorded
command lines then go through the benchmarks' own argument parsers.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
#: What one device call may take (the device tool's per-call limit is 600 s; the script's
#: header asks for timeout_s 540, which must cover every step's limit).
CALL_TIMEOUT_S = 540
#: The device machine (H100/H200 kinds): 16 cores, one GPU.
DEVICE_CORES = 16


def _run(tmp_path: Path, dry: bool, fail_on: str = "", mps: bool = True) -> tuple[list[list[str]], str]:
    """Run the script with a recording Python (and, with ``mps``, a stand-in MPS control that
    records its calls to ``mps.log``) -> (recorded argv lists, summary.log)."""
    rec = tmp_path / "calls.jsonl"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if mps:
        control = bin_dir / "nvidia-cuda-mps-control"
        control.write_text("#!/bin/sh\n"  # the daemon's flag, or the command it reads (quit)
                           "if [ $# -gt 0 ]; then a=\"$*\"; else a=$(cat); fi\n"
                           f"echo \"$a pipe=$CUDA_MPS_PIPE_DIRECTORY\" >> {tmp_path / 'mps.log'}\n")
        control.chmod(0o755)
    fake = tmp_path / "python"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "argv = sys.argv[1:]\n"
        "if argv and argv[0].endswith('bm_generate.py'):  # did the outputs of the job before stay?\n"
        "    out = os.path.join(argv[argv.index('--workdir') + 1], 'out')\n"
        "    argv = argv + ['#out-left-over=%s' % os.path.exists(out)]\n"
        "    os.makedirs(os.path.join(out, 'run'), exist_ok=True)\n"
        f"open({str(rec)!r}, 'a').write(json.dumps(argv) + '\\n')\n"
        f"sys.exit(1 if {fail_on!r} and any({fail_on!r} in a for a in sys.argv[1:]) else 0)\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=str(fake), OUT=str(out), GPU_CHECK_WORK=str(tmp_path / "work"),
               GPU_CHECK_DRY="1" if dry else "0", PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("CUDA_MPS_PIPE_DIRECTORY", None)
    env.pop("GPU_CHECK_CHARACTERS", None)
    subprocess.run(["bash", str(SCRIPT)], env=env, check=True, timeout=60, cwd=tmp_path,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    calls = [json.loads(line) for line in rec.read_text().splitlines()]
    return calls, (out / "summary.log").read_text()


@pytest.fixture(scope="module")
def benchmarks():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bm_actor_phases
        import bm_generate

        yield bm_generate, bm_actor_phases
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _script_calls(calls: list[list[str]], name: str) -> list[list[str]]:
    return [[a for a in c[1:] if not a.startswith("#")] for c in calls if c and c[0].endswith(name)]


@pytest.mark.parametrize("dry", [False, True], ids=["gpu", "dry"])
def test_commands_parse_and_fit_the_machine(tmp_path, benchmarks, dry):
    bm_generate, bm_actor_phases = benchmarks
    calls, summary = _run(tmp_path, dry)

    phases = _script_calls(calls, "bm_actor_phases.py")
    assert len(phases) == 1
    p = bm_actor_phases.build_parser().parse_args(phases[0])
    jobs = [bm_generate.parse_args(c) for c in _script_calls(calls, "bm_generate.py")]
    assert len(jobs) == (2 if dry else 3)
    tests = [c for c in calls if c[:2] == ["-m", "pytest"]]
    assert len(tests) == 1 and tests[0][tests[0].index("-m", 1) + 1] == "gpu"
    if not dry:  # every file with a GPU test, and only those (others import what the GPU machine lacks)
        files = sorted(a for a in tests[0] if a.startswith("tests/"))
        marked = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                        if "pytest.mark.gpu" in p.read_text())
        assert files == marked and len(marked) >= 7
    for j in jobs:
        assert j.stages == {"job"} and j.workdir == p.workdir  # portraits and checkpoint made once
    # each job's outputs are deleted before the next job (12,000 characters are ~17 GB)
    left = [a for c in calls if c and c[0].endswith("bm_generate.py") for a in c if a.startswith("#out")]
    assert left == ["#out-left-over=False"] * len(jobs)
    if dry:
        assert p.device == "cpu" and all(j.device == "cpu" and j.num_gpus == 0 for j in jobs)
    else:
        assert (p.device, p.arch, p.bf16, p.profile, p.micro) == ("cuda", "paper", True, True, True)
        for j in jobs:
            assert (j.device, j.arch, j.bf16) == ("cuda", "paper", True)
            # the actors fit one GPU and leave cores for the decode tasks and Ray
            assert j.num_actors * j.num_gpus <= 1.0
            assert j.num_actors * j.num_cpus_per_actor <= DEVICE_CORES - 2
            assert j.characters >= 10_000  # the steady rate needs the actors' start to weigh little
        assert [j.actor_calls for j in jobs] == [[1], [2], [1]]
        assert jobs[0].num_actors == 12 and jobs[0].cpu_by_process  # the layout measured before, for comparison
        # the MPS run is job12's layout, with the daemon started before it and stopped after it
        same = ("num_actors", "num_gpus", "num_cpus_per_actor", "batch_size", "write_threads", "characters")
        assert all(getattr(jobs[2], k) == getattr(jobs[0], k) for k in same)
        mps_calls = (tmp_path / "mps.log").read_text().splitlines()
        assert [c.split(" ")[0] for c in mps_calls] == ["-d", "quit"]
        assert all(c.endswith(str(tmp_path / "work" / "mps" / "pipe")) for c in mps_calls)
        limits = [int(x) for x in re.findall(r"\(limit (\d+)s", summary)]
        assert len(limits) == 5 and sum(limits) + 30 <= CALL_TIMEOUT_S  # 30 s: the set-up lines and transfers
    assert summary.count(": ok after") == len(calls) - 2  # every step but the two version probes
    assert "gpu_check done" in summary


def test_without_mps_its_run_is_skipped_and_said(tmp_path):
    if any(os.access(os.path.join(d, "nvidia-cuda-mps-control"), os.X_OK)
           for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("this machine has CUDA's MPS")
    calls, summary = _run(tmp_path, dry=False, mps=False)
    assert "job12mps: skipped (no nvidia-cuda-mps-control" in summary
    assert len([c for c in calls if c and c[0].endswith("bm_generate.py")]) == 2
    assert "gpu_check done" in summary


def test_a_failing_step_does_not_stop_the_rest(tmp_path):
    calls, summary = _run(tmp_path, dry=False, fail_on="bm_actor_phases.py")
    assert "phases: FAILED (exit 1)" in summary
    assert len([c for c in calls if c and c[0].endswith("bm_generate.py")]) == 3
    assert summary.count(": ok after") == 4  # tests and the three jobs
