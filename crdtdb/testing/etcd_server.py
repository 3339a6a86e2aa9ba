"""Run a real etcd cluster (1 or 3 members) for tests, with faults to inject.

``EtcdCluster`` starts every member as a child process on loopback ports, each with its own
data directory and log file, and waits (bounded) until each answers ``/health``.  Election
settings are fast (50 ms heartbeat, 500 ms election timeout) so that leader changes after a
``kill``/``pause`` take about a second, not ten.

The faults are crude on purpose: ``kill`` is SIGKILL (a crash, the data directory stays),
``restart`` starts the member again on the same directory and ports, ``pause``/``resume``
are SIGSTOP/SIGCONT (the member stops answering but its sockets stay open, which is what a
network partition looks like to a client).

Like :mod:`crdtdb.testing.ovsdb_server` this is synchronous and every wait is bounded; the
children get SIGKILL when the test process dies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from crdtdb.testing.ovsdb_server import StartedProcesses, die_with_parent, find_binary
from crdtdb.testing.ports import free_tcp_ports

#: The election settings every member gets: fast enough for tests, slow enough that a busy CI
#: machine does not flap (etcd wants election timeout >= 5 heartbeats).
TEST_HEARTBEAT_MS = 50
TEST_ELECTION_TIMEOUT_MS = 500


class EtcdServerError(RuntimeError):
    """etcd is missing, did not start or become healthy in time, or a wait timed out."""


def find_etcd() -> str | None:
    """The path of the etcd binary, or None (tests then skip)."""
    return find_binary("etcd")


def _tail(path: Path, n_lines: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(lines[-n_lines:]) or "(log is empty)"


#: urllib without the environment's proxies: the members are on loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post_json(url: str, body: dict[str, object], timeout_s: float) -> dict[str, object]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with _opener.open(request, timeout=timeout_s) as reply:
        result = json.loads(reply.read())
    if not isinstance(result, dict):
        raise ValueError(f"{url}: not a JSON object: {result!r}")
    return result


class _Member:
    def __init__(self, index: int, name: str, client_port: int, peer_port: int, data_dir: Path):
        self.index = index
        self.name = name
        self.client_url = f"http://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file: IO[bytes] | None = None
        self.paused = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster(StartedProcesses):
    """A local etcd cluster for tests, as a context manager::

        with EtcdCluster(3, tmp_path) as cluster:
            endpoints = cluster.endpoints      # ["http://127.0.0.1:PORT", ...]
            cluster.kill(cluster.leader_index())

    ``base_dir`` holds one data directory and one log file per member.
    """

    def __init__(
        self,
        n_members: int,
        base_dir: str | os.PathLike[str],
        *,
        startup_timeout_s: float = 20.0,
        stop_timeout_s: float = 5.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        if n_members < 1:
            raise ValueError("an etcd cluster needs at least one member")
        binary = find_etcd()
        if binary is None:
            raise EtcdServerError("etcd not found (install the Debian package etcd-server)")
        self.binary = binary
        self.base_dir = Path(base_dir)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_args = tuple(extra_args)
        ports = free_tcp_ports(2 * n_members)
        self.cluster_token = f"crdtdb-test-{os.getpid()}-{ports[0]}"
        self._members = [
            _Member(i, f"m{i}", ports[2 * i], ports[2 * i + 1], self.base_dir / f"m{i}.etcd")
            for i in range(n_members)
        ]
        self._initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self._members)

    # -- the surface tests use ------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        """Client URLs, in member order (dead members included)."""
        return [m.client_url for m in self._members]

    def __len__(self) -> int:
        return len(self._members)


    def start(self) -> None:
        """Start every member (a new cluster) and wait until each is healthy."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for member in self._members:
            self._spawn(member)
        for member in self._members:
            self._wait_healthy(member)

    def close(self) -> None:
        """Stop every member (SIGKILL: tests throw the data away anyway)."""
        for member in self._members:
            self._reap(member)

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (a crash); its data directory is kept for restart()."""
        self._reap(self._members[i])

    def restart(self, i: int) -> None:
        """Start member ``i`` again on its data directory and ports; wait until healthy."""
        member = self._members[i]
        self._reap(member)
        self._spawn(member)
        self._wait_healthy(member)

    def pause(self, i: int) -> None:
        """SIGSTOP member ``i``: it keeps its sockets but answers nothing (a partition)."""
        member = self._members[i]
        if not member.running or member.proc is None:
            raise EtcdServerError(f"member {i} is not running")
        member.proc.send_signal(signal.SIGSTOP)
        member.paused = True

    def resume(self, i: int) -> None:
        """SIGCONT member ``i`` after pause()."""
        member = self._members[i]
        if member.proc is not None and member.proc.poll() is None:
            member.proc.send_signal(signal.SIGCONT)
        member.paused = False

    def running(self, i: int) -> bool:
        return self._members[i].running

    def pid(self, i: int) -> int | None:
        proc = self._members[i].proc
        return proc.pid if proc is not None else None

    def log_tail(self, i: int, n_lines: int = 20) -> str:
        return _tail(self._members[i].log_path, n_lines)

    def leader_index(self, *, probe_timeout_s: float = 1.0) -> int | None:
        """The index of the member the running, unpaused members agree leads, or None
        (no leader, or they disagree, e.g. right after a kill)."""
        ids: dict[int, int] = {}
        leaders: set[int] = set()
        for member in self._members:
            if not member.running or member.paused:
                continue
            try:
                status = _post_json(
                    f"{member.client_url}/v3/maintenance/status", {}, probe_timeout_s
                )
                header = status["header"]
                if not isinstance(header, dict):
                    return None
                ids[int(header["member_id"])] = member.index
                leaders.add(int(str(status.get("leader", "0"))))
            except (OSError, ValueError, KeyError):
                return None
        if len(leaders) != 1:
            return None
        return ids.get(leaders.pop())

    def wait_for_leader(self, *, timeout_s: float = 10.0) -> int:
        """leader_index(), polled until there is one (bounded)."""
        deadline = time.monotonic() + timeout_s
        while True:
            leader = self.leader_index()
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                logs = "\n".join(
                    f"--- member {m.index}:\n{self.log_tail(m.index)}" for m in self._members
                )
                raise EtcdServerError(f"no etcd leader within {timeout_s} s\n{logs}")
            time.sleep(0.05)

    def remove_data(self) -> None:
        """Stop everything and delete the data directories and logs."""
        self.close()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- processes --------------------------------------------------------------------------

    def _command(self, member: _Member) -> list[str]:
        return [
            self.binary,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={self._initial_cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.cluster_token}",
            f"--heartbeat-interval={TEST_HEARTBEAT_MS}",
            f"--election-timeout={TEST_ELECTION_TIMEOUT_MS}",
            "--logger=zap",
            "--log-outputs=stderr",
            *self.extra_args,
        ]

    def _spawn(self, member: _Member) -> None:
        member.log_file = member.log_path.open("ab")
        member.paused = False
        member.proc = subprocess.Popen(
            self._command(member),
            stdin=subprocess.DEVNULL,
            stdout=member.log_file,
            stderr=member.log_file,
            preexec_fn=die_with_parent,
        )

    def _reap(self, member: _Member) -> None:
        proc, member.proc = member.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()  # SIGKILL also ends a stopped process
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired as exc:
                raise EtcdServerError(
                    f"etcd member {member.index} (pid {proc.pid}) did not die after SIGKILL"
                ) from exc
        member.paused = False
        if member.log_file is not None:
            member.log_file.close()
            member.log_file = None

    def _wait_healthy(self, member: _Member) -> None:
        """Poll /health until it says true: the member has a leader and serves requests."""
        deadline = time.monotonic() + self.startup_timeout_s
        last_error = "no answer"
        while True:
            if member.proc is None or member.proc.poll() is not None:
                status = member.proc.returncode if member.proc is not None else None
                raise EtcdServerError(
                    f"etcd member {member.index} exited with status {status} during startup; "
                    f"log {member.log_path}:\n{self.log_tail(member.index)}"
                )
            try:
                with _opener.open(f"{member.client_url}/health", timeout=1.0) as r:
                    health = json.loads(r.read())
                if health.get("health") == "true":
                    return
                last_error = f"/health says {health!r}"
            except (OSError, ValueError) as exc:
                last_error = str(exc)
            if time.monotonic() >= deadline:
                raise EtcdServerError(
                    f"etcd member {member.index} not healthy within {self.startup_timeout_s} s "
                    f"({last_error}); log {member.log_path}:\n{self.log_tail(member.index)}"
                )
            time.sleep(0.02)
