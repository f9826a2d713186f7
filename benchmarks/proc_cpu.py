"""CPU time of every process of this user during a run, grouped by what the process is (Linux).

Used by ``bm_generate.py --cpu-by-process`` to split a whole job's CPU between the driver,
Ray's own daemons (raylet with its object store, GCS, dashboard, ...) and the workers by the
task or actor they ran (Ray sets a worker's title to ``ray::<what it runs>``; an idle one is
``ray::IDLE``). A sampler thread reads ``/proc/<pid>/stat`` and the title of every process of
this user every ``interval`` seconds, so processes that start during the run are counted from
their start and processes that exit are counted up to their last sample (what a process spends
after its last sample is lost: at most ``interval`` of it). Nothing here is Ray-specific
beyond the titles. Prints nothing; returns numbers.
"""
from __future__ import annotations

import collections
import os
import re
import threading
import time
from typing import Optional

_TICK = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def _cpu_s(pid: int) -> Optional[float]:
    """User + system CPU seconds of a process (all its threads), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rfind(b")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of stat(5))


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def label(title: str, pid: int, driver_pid: int) -> str:
    """A short group name for a process title (Ray workers by what they run, daemons by name)."""
    if pid == driver_pid:
        return "driver (this process)"
    if title.startswith("ray::"):
        name = title[5:].split(" ")[0]
        if name == "IDLE":
            return "ray worker, idle"
        # "MapWorker(MapBatches(Reconstructor))" / "MapBatches(preprocess_batch)->..." -> as is, trimmed
        return "ray::" + re.sub(r"\s+", " ", name)[:80]
    for daemon in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env",
                   "ray_client_server"):
        if daemon in title:
            return f"ray daemon: {daemon}"
    if "default_worker.py" in title or "setup_worker" in title:
        return "ray worker, starting"
    return "other: " + (os.path.basename(title.split(" ")[0]) or "?")


class ProcessCpu:
    """``with ProcessCpu() as p: ...`` then ``p.by_label()``: CPU seconds per group over the block."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.uid = os.getuid()
        self.driver = os.getpid()
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.titles: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.wall_s = 0.0

    def _pids(self) -> list[int]:
        out = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if os.stat(f"/proc/{name}").st_uid == self.uid:
                        out.append(int(name))
                except OSError:
                    pass
        return out

    def _sample(self, initial: bool = False) -> None:
        for pid in self._pids():
            c = _cpu_s(pid)
            if c is None:
                continue
            if pid not in self.first:
                self.first[pid] = c if initial else 0.0  # a process born during the run: from its start
            self.last[pid] = c
            t = _title(pid)
            if t:
                self.titles[pid][t] += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "ProcessCpu":
        self._t0 = time.perf_counter()
        self._sample(initial=True)
        self._thread = threading.Thread(target=self._loop, name="proc-cpu", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.wall_s = time.perf_counter() - self._t0

    def by_label(self) -> dict[str, tuple[float, int]]:
        """{group: (CPU seconds, processes)}, largest first. A worker's group is its most
        frequent non-idle title (a worker that only idled counts as idle)."""
        groups: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
        for pid, last in self.last.items():
            used = last - self.first.get(pid, 0.0)
            if used <= 0.0:
                continue
            counts = self.titles.get(pid) or collections.Counter({"": 1})
            busy = [(n, t) for t, n in counts.items() if not t.startswith("ray::IDLE")]
            title = max(busy)[1] if busy else max((n, t) for t, n in counts.items())[1]
            g = groups[label(title, pid, self.driver)]
            g[0] += used
            g[1] += 1
        return dict(sorted(((k, (v[0], v[1])) for k, v in groups.items()), key=lambda kv: -kv[1][0]))
