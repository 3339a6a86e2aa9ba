"""A real clustered (Raft) ovsdb-server for tests: ``n_members`` processes on loopback.

::

    with OvsdbCluster(schema_path, tmp_path) as cluster:
        async with open_ovsdb_client(cluster.remotes) as client: ...
        cluster.kill(cluster.leader_index())

Member 0 is made with ``ovsdb-tool create-cluster DB SCHEMA tcp:127.0.0.1:RAFT0``, the
others with ``ovsdb-tool join-cluster DB NAME tcp:127.0.0.1:RAFTi tcp:127.0.0.1:RAFT0 ...``.
Each member is an ``ovsdb-server`` child in the foreground (it gets SIGKILL if the process
that started it dies) serving its database on a unix socket and on ``ptcp:PORT:127.0.0.1``;
its log, pid file, control socket and database live in ``base_dir/mI``.

Health is read from each member's ``_Server`` database (``connected``, ``leader``), as the
OVS IDL does, over the member's unix socket. Every wait is bounded and a failure names the
member and shows its log tail and ``cluster/status``.

All methods block and start processes: call them from the thread that will outlive the
members (normally the main thread, even inside a trio test; not from ``trio.to_thread``,
because PR_SET_PDEATHSIG fires when the *thread* that started the child exits).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from crdtdb.errors import CrdtdbError
from crdtdb.testing.ovsdb_server import (
    ChildServer,
    OvsdbRpcError,
    OvsdbServerError,
    StartedProcesses,
    find_binaries,
    find_binary,
)
from crdtdb.testing.ports import free_tcp_ports

__all__ = ["ClusterMember", "OvsdbCluster", "OvsdbClusterError"]

#: Console log lines with milliseconds: elections happen within a second.
_LOG_PATTERN = "PATTERN:console:%D{%Y-%m-%dT%H:%M:%S.###Z}|%05N|%c%T|%p|%m"


class OvsdbClusterError(CrdtdbError, OvsdbServerError):
    """The cluster could not be created, did not become healthy in time, or a member
    misbehaved."""


class ClusterMember(ChildServer):
    """One member: an ovsdb-server serving one clustered database file.

    The database file is made on the first start only, so :meth:`start` after a kill
    rejoins the cluster with the member's own log, as a restarted server would.
    """

    what = "ovsdb-server"

    def __init__(
        self,
        schema_path: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        *,
        index: int,
        raft_address: str,
        client_port: int,
        peers: Sequence[str],
        election_timer_ms: int,
        startup_timeout_s: float = 10.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(
            schema_path, workdir, startup_timeout=startup_timeout_s, stop_timeout=stop_timeout_s
        )
        self.tool, self.server = find_binaries()
        self.index = index
        self.raft_address = raft_address
        self.client_port = client_port
        self.db_path = self.workdir / f"{self.db_name}.db"
        #: The first member creates the cluster; the others join the members before them.
        self.create_command = (
            [self.tool, "join-cluster", str(self.db_path), self.db_name, raft_address, *peers]
            if peers
            else [
                self.tool, f"--election-timer={election_timer_ms}", "create-cluster",
                str(self.db_path), str(self.schema_paths[0]), raft_address,
            ]
        )
        self.ctl_path = self.sock_path.parent / "db.ctl"
        self.pid_path = self.workdir / "ovsdb-server.pid"
        self.paused = False

    @property
    def tcp_remote(self) -> str:
        return f"tcp:127.0.0.1:{self.client_port}"

    def _prepare(self) -> None:
        if self.db_path.exists():
            return
        made = subprocess.run(
            self.create_command, capture_output=True, text=True, timeout=30, check=False
        )
        if made.returncode != 0:
            raise OvsdbClusterError(
                f"member {self.index}: {' '.join(self.create_command)} failed "
                f"(exit {made.returncode}): {made.stderr.strip()}"
            )

    def _command(self) -> list[str]:
        return [
            self.server,
            str(self.db_path),
            f"--remote=punix:{self.sock_path}",
            f"--remote=ptcp:{self.client_port}:127.0.0.1",
            f"--unixctl={self.ctl_path}",
            f"--pidfile={self.pid_path}",
            "--no-chdir",
            f"--verbose={_LOG_PATTERN}",
        ]

    def exit_status(self) -> int | None:
        """The exit status if the process was started and has exited on its own."""
        return self._proc.poll() if self._proc is not None else None

    def send_signal(self, signum: int) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise OvsdbClusterError(f"member {self.index} is not running")
        self._proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, and reap: no chance to flush or say goodbye to the cluster."""
        if self.running:
            self.send_signal(signal.SIGKILL)
        self.paused = False
        self.stop()

    def stop(self) -> int | None:
        # A stopped process keeps SIGTERM pending until it continues.
        if self.paused and self.running:
            self.send_signal(signal.SIGCONT)
        self.paused = False
        return super().stop()

    def cluster_status(self) -> str:
        """``ovs-appctl cluster/status DB`` (for error messages), or why it is missing."""
        appctl = find_binary("ovs-appctl")
        if appctl is None:
            return "(ovs-appctl not found)"
        if not self.running or self.paused:
            return "(member not running)" if not self.running else "(member paused)"
        try:
            done = subprocess.run(
                [appctl, "-t", str(self.ctl_path), "--timeout=2", "cluster/status", self.db_name],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "(cluster/status timed out)"
        return (done.stdout or done.stderr).strip()

    def server_row(self, timeout_s: float = 2.0) -> dict[str, object] | None:
        """This member's ``_Server.Database`` row for the clustered database, or None when
        the member cannot answer (not running, paused, or too slow)."""
        if not self.running or self.paused:
            return None
        try:
            with self.client(timeout=timeout_s) as client:
                result = client.transact("_Server", [{
                    "op": "select",
                    "table": "Database",
                    "where": [["name", "==", self.db_name]],
                    "columns": ["connected", "leader", "model", "index"],
                }])
        except (OSError, OvsdbRpcError, OvsdbServerError):
            return None
        rows = result[0].get("rows") if result and isinstance(result[0], dict) else None
        return rows[0] if rows else None


class OvsdbCluster(StartedProcesses):
    """``n_members`` ovsdb-server processes forming one Raft cluster of one database.

    ``election_timer_ms`` is passed to ``create-cluster``; it bounds how long a re-election
    after a leader's death takes (OVS's default is 1000 ms). ``remotes`` lists every
    member's client address, comma-separated, as OVSDB clients take them.
    """

    def __init__(
        self,
        schema_path: str | os.PathLike[str],
        base_dir: str | os.PathLike[str],
        n_members: int = 3,
        *,
        election_timer_ms: int = 500,
        healthy_timeout_s: float = 20.0,
    ) -> None:
        if n_members < 1:
            raise ValueError("a cluster needs at least one member")
        self.schema_path = Path(schema_path)
        self.base_dir = Path(base_dir)
        self.election_timer_ms = election_timer_ms
        self.healthy_timeout_s = healthy_timeout_s
        ports = free_tcp_ports(2 * n_members)
        raft_addresses = [f"tcp:127.0.0.1:{p}" for p in ports[:n_members]]
        self.members = [
            ClusterMember(
                self.schema_path,
                self.base_dir / f"m{i}",
                index=i,
                raft_address=raft_addresses[i],
                client_port=ports[n_members + i],
                peers=raft_addresses[:i],
                election_timer_ms=election_timer_ms,
            )
            for i in range(n_members)
        ]

    # -- addresses -------------------------------------------------------------------------

    @property
    def db_name(self) -> str:
        return self.members[0].db_name

    @property
    def remotes(self) -> str:
        """Every member's tcp client address, comma-separated."""
        return ",".join(m.tcp_remote for m in self.members)

    @property
    def unix_remotes(self) -> str:
        """Every member's unix socket, comma-separated."""
        return ",".join(m.remote for m in self.members)

    def remote(self, i: int, *, unix: bool = False) -> str:
        """Member ``i``'s client address (tcp, or its unix socket)."""
        return self.members[i].remote if unix else self.members[i].tcp_remote

    def log_tail(self, i: int, n_lines: int = 20) -> str:
        return self.members[i].log_tail(n_lines)

    # -- lifecycle -------------------------------------------------------------------------


    def start(self) -> None:
        """Create the databases (first start only), start every member, wait until all are
        connected to the cluster and one is leader."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            member.start()
        self.wait_healthy()

    def close(self) -> None:
        for member in self.members:
            member.close()

    def kill(self, i: int) -> None:
        """SIGKILL member ``i``."""
        self.members[i].kill()

    def restart(self, i: int, *, wait: bool = True) -> None:
        """Start member ``i`` again (killing it first if it runs) on its own database file,
        and by default wait until it is connected to the cluster again."""
        member = self.members[i]
        member.kill()
        member.start()
        if wait:
            self._wait_for(
                lambda: _connected(member.server_row()),
                f"member {i} to reconnect to the cluster",
                members=[member],
            )

    def pause(self, i: int) -> None:
        """SIGSTOP member ``i``: it keeps its sockets but answers nothing (a hung server)."""
        self.members[i].send_signal(signal.SIGSTOP)
        self.members[i].paused = True

    def resume(self, i: int) -> None:
        self.members[i].send_signal(signal.SIGCONT)
        self.members[i].paused = False

    # -- health ----------------------------------------------------------------------------

    def wait_healthy(self, timeout_s: float | None = None) -> None:
        """Wait until every running, unpaused member is connected and exactly one of them
        is leader."""

        def healthy() -> bool:
            live = [m for m in self.members if m.running and not m.paused]
            rows = [m.server_row() for m in live]
            return (
                bool(live)
                and all(_connected(row) for row in rows)
                and sum(_leader(row) for row in rows) == 1
            )

        self._wait_for(healthy, "the cluster to become healthy", timeout_s=timeout_s)

    def leader_index(self, timeout_s: float = 10.0) -> int:
        """The index of the one running member that says it is the connected leader;
        waits (bounded) through an election."""
        found: list[int] = []

        def one_leader() -> bool:
            found[:] = [
                m.index for m in self.members if _leader(m.server_row())
            ]
            return len(found) == 1

        self._wait_for(one_leader, "exactly one leader", timeout_s=timeout_s)
        return found[0]

    def _wait_for(
        self,
        condition: Callable[[], bool],
        what: str,
        *,
        timeout_s: float | None = None,
        members: Sequence[ClusterMember] | None = None,
    ) -> None:
        limit_s = self.healthy_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit_s
        delay_s = 0.01
        while not condition():
            for member in members or self.members:
                status = member.exit_status()
                if status is not None:
                    raise OvsdbClusterError(
                        f"member {member.index} exited with status {status} while waiting "
                        f"for {what}:\n"
                        f"{self._diagnostics([member])}"
                    )
            if time.monotonic() >= deadline:
                raise OvsdbClusterError(
                    f"timed out after {limit_s} s waiting for {what}:\n"
                    f"{self._diagnostics(members or self.members)}"
                )
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.1)

    def _diagnostics(self, members: Sequence[ClusterMember]) -> str:
        parts = []
        for m in members:
            parts.append(
                f"--- member {m.index} ({m.tcp_remote}, raft {m.raft_address}), "
                f"log {m.log_path}:\n{m.log_tail()}\n--- cluster/status:\n{m.cluster_status()}"
            )
        return "\n".join(parts)


def _connected(row: dict[str, object] | None) -> bool:
    return row is not None and row.get("connected") is True


def _leader(row: dict[str, object] | None) -> bool:
    return _connected(row) and row is not None and row.get("leader") is True

