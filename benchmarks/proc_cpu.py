"""CPU time and memory of every process of this user during a run, grouped by what the process
is (Linux).

Used by ``bm_generate.py --cpu-by-process`` to split a whole job's CPU between the driver,
Ray's own daemons (raylet with its object store, GCS, dashboard, ...) and the workers by the
task or actor they ran (Ray sets a worker's title to ``ray::<what it runs>``; an idle one is
``ray::IDLE``). A sampler thread reads ``/proc/<pid>/stat`` and the title of every process of
this user every ``interval`` seconds, so processes that start during the run are counted from
their start and processes that exit are counted up to their last sample (what a process spends
after its last sample is lost: at most ``interval`` of it). Nothing here is Ray-specific
beyond the titles. Prints nothing; returns numbers.

Memory (``bm_generate.py --memory``): each sample also reads every process's resident set from
``/proc/<pid>/statm`` (resident pages, and of them the shared ones: file-backed and shared
memory, e.g. Ray's object store mapped into a worker), so ``private = resident - shared`` is
what the process itself allocated. :meth:`ProcessCpu.memory_by_label` gives each group's peaks,
:meth:`ProcessCpu.private_in` a group's memory in given time windows (does it grow with the work done?).
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


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _memory(pid: int) -> Optional[tuple[int, int]]:
    """(resident bytes, private bytes = resident - shared) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    resident, shared = int(fields[1]) * _PAGE, int(fields[2]) * _PAGE
    return resident, max(resident - shared, 0)


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
    """``with ProcessCpu() as p: ...`` then ``p.by_label()``: CPU seconds per group over the block;
    ``p.memory_by_label()``, ``p.private_in(...)``: memory (module docstring)."""

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
        #: one entry per sample: (wall-clock time.time(), {pid: (resident, private) bytes})
        self.samples: list[tuple[float, dict[int, tuple[int, int]]]] = []

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
        memory: dict[int, tuple[int, int]] = {}
        now = time.time()
        for pid in self._pids():
            c = _cpu_s(pid)
            m = _memory(pid)
            if c is None or m is None:
                continue
            memory[pid] = m
            if pid not in self.first:
                self.first[pid] = c if initial else 0.0  # a process born during the run: from its start
            self.last[pid] = c
            t = _title(pid)
            if t:
                self.titles[pid][t] += 1
        self.samples.append((now, memory))

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

    def label_of(self, pid: int) -> str:
        """The group of a process: a worker's is its most frequent non-idle title (a worker that
        only idled counts as idle)."""
        counts = self.titles.get(pid) or collections.Counter({"": 1})
        busy = [(n, t) for t, n in counts.items() if not t.startswith("ray::IDLE")]
        title = max(busy)[1] if busy else max((n, t) for t, n in counts.items())[1]
        return label(title, pid, self.driver)

    def by_label(self) -> dict[str, tuple[float, int]]:
        """{group: (CPU seconds, processes)}, largest first."""
        groups: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
        for pid, last in self.last.items():
            used = last - self.first.get(pid, 0.0)
            if used <= 0.0:
                continue
            g = groups[self.label_of(pid)]
            g[0] += used
            g[1] += 1
        return dict(sorted(((k, (v[0], v[1])) for k, v in groups.items()), key=lambda kv: -kv[1][0]))

    def memory_by_label(self) -> dict[str, dict[str, float]]:
        """{group: {"processes", "resident", "private" (the most any one process of the group had,
        bytes), "private_sum" (the most the group had at one sample)}}, largest private first;
        plus "all processes": the most resident memory of every process together at one sample."""
        labels = {pid: self.label_of(pid) for pid in self.titles.keys() | {p for _, m in self.samples for p in m}}
        out: dict[str, dict[str, float]] = {}
        most_total = 0
        for _, memory in self.samples:
            sums: dict[str, int] = collections.Counter()
            for pid, (resident, private) in memory.items():
                g = out.setdefault(labels[pid], {"processes": 0, "resident": 0, "private": 0, "private_sum": 0})
                g["resident"] = max(g["resident"], resident)
                g["private"] = max(g["private"], private)
                sums[labels[pid]] += private
            for name, v in sums.items():
                out[name]["private_sum"] = max(out[name]["private_sum"], v)
            most_total = max(most_total, sum(r for r, _ in memory.values()))
        for pid, name in labels.items():
            if name in out:
                out[name]["processes"] += 1
        ordered = dict(sorted(out.items(), key=lambda kv: -kv[1]["private"]))
        ordered["all processes"] = {"processes": len(labels), "resident": most_total, "private": 0, "private_sum": 0}
        return ordered

    def private_in(self, group: str, windows: list[tuple[float, float]]) -> list[float]:
        """The group's private memory (bytes, mean over its live processes) in each wall-clock window
        ``(start, end)`` (``time.time()`` seconds): the median over the samples inside the window
        (one batch's working set comes and goes; the median is the level), or over the sample
        nearest its middle when none falls inside; NaN where no process of the group was alive."""
        import statistics

        pids = {pid for pid in self.titles if self.label_of(pid) == group}

        def level(memory: dict) -> Optional[float]:
            vals = [memory[p][1] for p in pids if p in memory]
            return sum(vals) / len(vals) if vals else None

        out = []
        for start, end in windows:
            inside = [v for t, m in self.samples if start <= t <= end for v in [level(m)] if v is not None]
            if not inside and self.samples:
                _, memory = min(self.samples, key=lambda s: abs(s[0] - (start + end) / 2))
                inside = [v for v in [level(memory)] if v is not None]
            out.append(statistics.median(inside) if inside else float("nan"))
        return out
