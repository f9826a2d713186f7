"""The cluster story end to end: `ray start --head` (started and stopped here), then
`ray job submit --working-dir <repo> -- python jobs/train.py ...` with the real DCNN-FLAME task
at a tiny size; the job's status, its logs and the checkpoint it wrote are checked."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from train_helpers import train_shards

from dcnn_flame.training import checkpoint as ck

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never attach to a stray cluster
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S="120",
               RAY_DATA_PARQUET_FOOTER_NUM_ACTORS="1", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    return env


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (from /proc; no psutil needed)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        out[int(name)] = (ppid, cmd)
    return out


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found


def _kill_tree(proc: subprocess.Popen, temp_dir: str) -> None:
    """Stop the cluster this test started, by PID only (never a broad `ray stop`): SIGTERM to
    `ray start --block` (it stops its node), then SIGKILL whatever is left of its process tree
    (Ray workers run in their own sessions) or still names its private temp dir."""
    table = _proc_table()
    tree = _descendants(proc.pid, table) | {p for p, (_, cmd) in table.items() if temp_dir in cmd}
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=8)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    table = _proc_table()
    tree |= {p for p, (_, cmd) in table.items() if temp_dir in cmd}
    for pid in sorted(tree | {proc.pid}):
        if pid != os.getpid() and pid in table:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if proc.poll() is None:
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_head():
    """A `ray start --head --block` cluster on private ports and a private temp dir; yields the
    dashboard (job API) address; stopped in a finally."""
    temp_dir = f"/tmp/rj{uuid.uuid4().hex[:6]}"  # short: Unix socket paths have a length limit
    os.makedirs(temp_dir)
    gcs, dash, agent_grpc, agent_http, metrics, renv, client, nm, om = _free_ports(9)
    cmd = [RAY, "start", "--head", "--block", f"--temp-dir={temp_dir}", "--num-cpus=4",
           f"--object-store-memory={512 * 1024 * 1024}", f"--port={gcs}", "--include-dashboard=true",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--dashboard-agent-listen-port={agent_http}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={renv}", f"--ray-client-server-port={client}",
           f"--node-manager-port={nm}", f"--object-manager-port={om}", "--disable-usage-stats"]
    log = open(os.path.join(temp_dir, "ray_start.log"), "w")
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 90
        while True:
            r = subprocess.run([RAY, "job", "list", "--address", address], env=_env(), capture_output=True,
                               text=True)
            if r.returncode == 0:
                break
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                raise RuntimeError(f"ray start --head did not come up: {open(log.name).read()[-3000:]}")
            time.sleep(1)
        yield address
    finally:
        _kill_tree(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_trains_and_checkpoints(ray_head, tmp_path):
    shards = train_shards.make_dataset(str(tmp_path / "shards"), n_train=4, n_val=2, image_size=64)
    out = str(tmp_path / "out")
    sub_id = f"train-{uuid.uuid4().hex[:8]}"
    args = ["name=job1", "trainer.num_workers=1", "trainer.max_steps=2", "trainer.val_every=2",
            "trainer.log_every=1", "trainer.max_failures=0", f"data.train_uri={shards}", f"storage.uri={out}",
            "data.batch_size=2", "data.val_batch_size=2", "data.shuffle_buffer=0", "data.synthetic_if_missing=false",
            "model.backbone=resnet18", "model.image_size=64", "model.use_detail=false", "loss.content=0",
            "loss.style=0", "loss.expression=0", "loss.feedback=0", "optim.lr=1e-4",
            f"hydra.run.dir={tmp_path / 'hydra'}"]
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head, "--submission-id", sub_id, "--working-dir", REPO, "--",
         sys.executable, "jobs/train.py", *args],
        env=_env(), capture_output=True, text=True, timeout=400)
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_head)
    status = client.get_job_status(sub_id)
    logs = client.get_job_logs(sub_id)
    assert status == JobStatus.SUCCEEDED, (status, submit.stdout[-4000:], submit.stderr[-4000:])
    assert submit.returncode == 0 and f"{sub_id}' succeeded" in submit.stdout + submit.stderr
    assert "[train] run 'job1' (stage pretrain) finished at step 2" in logs, logs[-4000:]
    assert "[train] step 2/2 |" in logs and "[val] step 2 |" in logs
    run = os.path.join(out, "runs", "job1")
    state, config, step = ck.load_checkpoint_for_inference(run)
    assert step == 2 and config["model"]["image_size"] == 64 and config["trainer"]["num_workers"] == 1
    from dcnn_flame.model.build import build_model
    from dcnn_flame.config import FlameConfig
    from dcnn_flame.model.config import ModelConfig

    net = build_model(FlameConfig(**config["flame"]), ModelConfig(**config["model"]))
    net.load_state_dict(state)  # strict: the checkpoint is the job's exact model
