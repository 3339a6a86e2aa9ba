"""A process's CPU time and resident memory, read from /proc (Linux); stopping the
servers a measurement started."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of the process itself (not its children); None once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def running_cpu_seconds(pid: int | None) -> float:
    """:func:`cpu_seconds` of a process that must still run (a measurement of one that died
    would be silently wrong)."""
    cpu = cpu_seconds(pid) if pid is not None else None
    if cpu is None:
        raise RuntimeError(f"process {pid} is gone")
    return cpu


def rss_bytes(pid: int) -> int | None:
    """VmRSS of the process; None once gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def stop_processes(*procs: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM to each (they shut down together), then wait; SIGKILL whichever is still
    running after ``timeout_s`` (a server under callgrind writes its profile on the way
    out, which takes a while)."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
