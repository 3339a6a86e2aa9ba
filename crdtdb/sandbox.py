"""A real OVN cloud on one machine, its Southbound on crdtdb nodes: ``crdtdb sandbox``.

Every chassis is real: its own ovsdb-server (Open_vSwitch), ovs-vswitchd with the dummy
datapath (no kernel module), and ovn-controller, each chassis in its own run directory. With
``central="crdtdb"`` each chassis's ovn-controller talks to *its own* crdtdb node, which
serves the Southbound as a CRDT replica gossiping with the central node; the central node
serves the Northbound on the consensus path (``local`` plugin, or a real etcd) and the
Southbound to ovn-northd. With ``central="ovsdb"`` the same cloud runs on one central
ovsdb-server instead: the reference the tests and the benchmark compare against.

Gossip links go through small tcp relays the sandbox owns (a star: every chassis node to the
central node), so :meth:`Sandbox.partition` can cut a chassis off and :meth:`Sandbox.heal`
reconnect it, without root. With ``partitionable=False`` the chassis nodes dial the central
node directly: no relay hop (a Python thread in this process) on every gossip frame, as in a
real deployment; the benchmark runs that way.

All processes are children of this process (they die with it) and are stopped on exit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

from crdtdb.errors import CrdtdbError
from crdtdb.testing.ovsdb_server import die_with_parent, find_binary
from crdtdb.testing.ports import free_tcp_ports

log = logging.getLogger(__name__)

NB_SCHEMA = Path("/usr/share/ovn/ovn-nb.ovsschema")
SB_SCHEMA = Path("/usr/share/ovn/ovn-sb.ovsschema")
VSWITCH_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
TOOLS = ("ovsdb-server", "ovsdb-tool", "ovs-vsctl", "ovs-vswitchd", "ovs-ofctl",
         "ovn-controller", "ovn-northd", "ovn-nbctl", "ovn-sbctl", "ovn-appctl")
_ZONE_RE = re.compile(r"load:0x[0-9a-f]+->NXM_NX_REG1([123])\[\]")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class SandboxError(CrdtdbError):
    """A sandbox process failed to start or a command failed (the message has its output)."""


def find_tools() -> dict[str, str]:
    """The OVS/OVN binaries the sandbox needs; SandboxError names the missing ones."""
    found = {t: find_binary(t) for t in TOOLS}
    missing = [t for t, p in found.items() if p is None]
    if missing:
        raise SandboxError(f"missing {', '.join(missing)} (Debian packages openvswitch-switch, "
                           "ovn-central, ovn-host)")
    return {t: p for t, p in found.items() if p is not None}


class Relay:
    """A tcp relay from a local port to ``target`` that can be cut (a network partition)."""

    def __init__(self, target: tuple[str, int], *, chunk_bytes: int = 65536):
        self.target = target
        self.chunk_bytes = chunk_bytes
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 0.5)
                if self._cut or self._closed:
                    return
                for src in ready:
                    data = src.recv(self.chunk_bytes)
                    if not data:
                        return
                    (b if src is a else a).sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._conns = [c for c in self._conns if c is not a and c is not b]
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`heal`."""
        self._cut = True
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            self._conns.clear()

    def heal(self) -> None:
        self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()


@dataclass(eq=False)
class _Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out, preexec_fn=die_with_parent)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 5.0) -> None:
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)

    def tail(self, n_lines: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n_lines:])


@dataclass(eq=False)
class Chassis:
    name: str
    index: int
    dir: Path
    encap_ip: str
    #: Where its ovn-controller finds the Southbound (its own crdtdb node, or the central).
    sb_remote: str = ""
    node: _Proc | None = None
    relay: Relay | None = None
    procs: list[_Proc] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        d = str(self.dir)
        return {**os.environ, "OVS_RUNDIR": d, "OVN_RUNDIR": d, "OVS_LOGDIR": d,
                "OVS_DBDIR": d, "OVS_SYSCONFDIR": d}

    @property
    def ovs_db(self) -> str:
        return f"unix:{self.dir / 'conf.sock'}"


class Sandbox:
    """N chassis and a control plane, as real processes under ``base_dir``."""

    def __init__(self, base_dir: str | os.PathLike[str], n_chassis: int = 3, *,
                 central: str = "crdtdb", nb_plugin: str = "local",
                 step_timeout_s: float = 20.0, partitionable: bool = True,
                 compact_after_updates: int | None = None):
        if central not in ("crdtdb", "ovsdb"):
            raise ValueError("central must be 'crdtdb' or 'ovsdb'")
        if nb_plugin not in ("local", "etcd"):
            raise ValueError("nb_plugin must be 'local' or 'etcd'")
        self.tools = find_tools()
        self.base_dir = Path(base_dir)
        self.central_kind = central
        self.nb_plugin = nb_plugin
        self.step_timeout_s = step_timeout_s
        self.partitionable = partitionable
        #: The central node coordinates compaction rounds of the SB after this many changes
        #: (``crdtdb serve --compact-after-updates``; None: never).
        self.compact_after_updates = compact_after_updates
        self.central_dir = self.base_dir / "central"
        self.chassis = [Chassis(f"hv{i + 1}", i, self.base_dir / f"hv{i + 1}",
                                f"127.0.1.{i + 1}") for i in range(n_chassis)]
        self._central: list[_Proc] = []
        self._etcd: Any = None
        self._gossip_port = 0

    # --- addresses ------------------------------------------------------------------------

    @property
    def nb_remote(self) -> str:
        return f"unix:{self.central_dir / 'db.sock'}"

    @property
    def sb_remote(self) -> str:
        return f"unix:{self.central_dir / 'db.sock'}"

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        t0 = time.monotonic()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.central_dir.mkdir(exist_ok=True)
        self._start_central()
        for ch in self.chassis:
            self.start_chassis(ch)
        self.wait_for("every chassis registered", lambda: self.registered() == {
            ch.name for ch in self.chassis})
        log.info("sandbox up: %d chassis on %s in %.1f s", len(self.chassis),
                 self.central_kind, time.monotonic() - t0)

    def _central_proc(self, name: str, argv: list[str]) -> _Proc:
        p = _Proc(name, argv, dict(os.environ), self.central_dir / f"{name}.log")
        p.start()
        self._central.append(p)
        return p

    def _start_central(self) -> None:
        sock = self.central_dir / "db.sock"
        if self.central_kind == "ovsdb":
            for schema, db in ((NB_SCHEMA, "nb.db"), (SB_SCHEMA, "sb.db")):
                if not (self.central_dir / db).exists():
                    self._run([self.tools["ovsdb-tool"], "create",
                               str(self.central_dir / db), str(schema)])
            self._central_proc("ovsdb-server", [
                self.tools["ovsdb-server"], str(self.central_dir / "nb.db"),
                str(self.central_dir / "sb.db"), f"--remote=punix:{sock}", "--no-chdir",
                f"--unixctl={self.central_dir / 'ovsdb.ctl'}"])
        else:
            (self._gossip_port,) = free_tcp_ports(1)
            config = self.central_dir / "crdtdb.toml"
            config.write_text(self._config_text())
            self._central_proc("crdtdb", [
                sys.executable, "-m", "crdtdb.cli", "serve", f"--remote=punix:{sock}",
                f"--data-dir={self.central_dir / 'data'}", f"--config={config}",
                "--node-id=central", f"--listen=127.0.0.1:{self._gossip_port}",
                # The hub of the star: every chassis node pulls it while changes flow, so
                # forwarding a chassis's update to 2 others as well only doubles the work
                # (docs/sandbox.md).
                "--gossip-fanout=0",
                *([f"--compact-after-updates={self.compact_after_updates}"]
                  if self.compact_after_updates else []),
                str(NB_SCHEMA), str(SB_SCHEMA)])
        self._wait_socket(sock, self._central[-1])
        self.nbctl("--no-wait", "init")
        # ovn-northd would pick a random service-monitor MAC (it ends up in every chassis's
        # flows): fix it, so two runs of the same cloud have the same flows. Before northd
        # starts: northd writes NB_Global's options whole, and a write from a northd that
        # had not yet seen this key put its random MAC back (seen ~1 run in 60).
        self.nbctl("--no-wait", "set", "NB_Global", ".",
                   'options:svc_monitor_mac="02:00:00:00:fe:01"')
        self._central_proc("ovn-northd", [
            self.tools["ovn-northd"], f"--ovnnb-db={self.nb_remote}",
            f"--ovnsb-db={self.sb_remote}", "--no-chdir",
            f"--unixctl={self.central_dir / 'northd.ctl'}"])

    def _config_text(self) -> str:
        if self.nb_plugin == "etcd":
            from crdtdb.testing.etcd_server import EtcdCluster

            self._etcd = EtcdCluster(1, self.central_dir / "etcd", extra_args=(
                "--max-txn-ops=65536", "--max-request-bytes=33554432"))
            self._etcd.start()
            return ('profile = "ovn"\n[plugins.etcd]\nendpoints = '
                    f'["{self._etcd.endpoints[0]}"]\n')
        return 'profile = "ovn"\n'

    def start_chassis(self, ch: Chassis) -> None:
        """Start (or restart) a chassis: its crdtdb node, ovsdb-server, vswitchd, controller."""
        ch.dir.mkdir(parents=True, exist_ok=True)
        env = ch.env
        ch.procs = []  # filled as each starts, so stop() finds whatever did
        if self.central_kind == "crdtdb":
            if ch.relay is None and self.partitionable:
                ch.relay = Relay(("127.0.0.1", self._gossip_port))
            ch.node = self._chassis_node(ch)
            ch.sb_remote = f"unix:{ch.dir / 'sb.sock'}"
        else:
            ch.sb_remote = self.sb_remote
        conf = ch.dir / "conf.db"
        fresh = not conf.exists()
        if fresh:
            self._run([self.tools["ovsdb-tool"], "create", str(conf), str(VSWITCH_SCHEMA)])
        ovsdb = _Proc(f"{ch.name}-ovsdb", [
            self.tools["ovsdb-server"], str(conf), f"--remote=punix:{ch.dir / 'conf.sock'}",
            "--no-chdir", f"--unixctl={ch.dir / 'ovsdb.ctl'}"], env, ch.dir / "ovsdb.log")
        ovsdb.start()
        ch.procs.append(ovsdb)
        self._wait_socket(ch.dir / "conf.sock", ovsdb)
        vsctl = [self.tools["ovs-vsctl"], f"--db={ch.ovs_db}",
                 f"--timeout={self.step_timeout_s:.0f}"]
        if fresh:
            self._run([*vsctl, "--no-wait", "init"], env=env)
        self._run([*vsctl, "--no-wait", "set", "Open_vSwitch", ".",
                   f"external_ids:system-id={ch.name}",
                   f"external_ids:ovn-remote={ch.sb_remote}",
                   "external_ids:ovn-encap-type=geneve",
                   f"external_ids:ovn-encap-ip={ch.encap_ip}",
                   "external_ids:ovn-bridge-datapath-type=dummy"], env=env)
        vswitchd = _Proc(f"{ch.name}-vswitchd", [
            self.tools["ovs-vswitchd"], ch.ovs_db, "--enable-dummy", "--disable-system",
            "--no-chdir", f"--unixctl={ch.dir / 'vswitchd.ctl'}"], env, ch.dir / "vswitchd.log")
        vswitchd.start()
        ch.procs.append(vswitchd)
        self._run([*vsctl, "--may-exist", "add-br", "br-int", "--", "set", "bridge", "br-int",
                   "datapath_type=dummy", "fail-mode=secure",
                   "other-config:disable-in-band=true",
                   # A fixed MAC (else random), so flow tables compare across runs.
                   f"other-config:hwaddr=00:00:00:fe:00:{ch.index + 1:02x}"], env=env)
        controller = _Proc(f"{ch.name}-controller", [
            self.tools["ovn-controller"], ch.ovs_db, "--no-chdir",
            f"--log-file={ch.dir / 'ovn-controller.log'}", "-vconsole:off"],
            env, ch.dir / "ovn-controller.console")
        controller.start()
        ch.procs.append(controller)

    def _chassis_node(self, ch: Chassis) -> _Proc:
        port = ch.relay.port if ch.relay is not None else self._gossip_port
        node = _Proc(f"{ch.name}-crdtdb", [
            sys.executable, "-m", "crdtdb.cli", "serve", f"--remote=punix:{ch.dir / 'sb.sock'}",
            f"--data-dir={ch.dir / 'data'}", f"--node-id={ch.name}",
            f"--peer=127.0.0.1:{port}", str(SB_SCHEMA)],
            dict(os.environ), ch.dir / "crdtdb.log")
        (ch.dir / "sb.sock").unlink(missing_ok=True)
        node.start()
        ch.procs.insert(0, node)  # stopped last
        self._wait_socket(ch.dir / "sb.sock", node)
        return node

    def stop(self) -> None:
        for ch in self.chassis:
            for p in reversed(ch.procs):
                p.stop()
            if ch.relay is not None:
                ch.relay.close()
                ch.relay = None
        for p in reversed(self._central):
            p.stop()
        self._central.clear()
        if self._etcd is not None:
            self._etcd.close()
            self._etcd = None

    # --- faults ---------------------------------------------------------------------------

    def partition(self, ch: Chassis) -> None:
        """Cut the chassis's node off from the central node (and so from everyone)."""
        if ch.relay is None:
            raise SandboxError("partitions need central='crdtdb' and partitionable=True")
        ch.relay.cut()

    def heal(self, ch: Chassis) -> None:
        if ch.relay is not None:
            ch.relay.heal()

    def kill_node(self, ch: Chassis) -> None:
        """SIGKILL the chassis's crdtdb node (its ovn-controller keeps running)."""
        if ch.node is not None:
            ch.node.stop(signal.SIGKILL)

    def restart_node(self, ch: Chassis) -> None:
        if ch.node is not None:
            ch.procs.remove(ch.node)
        ch.node = self._chassis_node(ch)

    # --- commands -------------------------------------------------------------------------

    def _run(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
             timeout_s: float | None = None) -> str:
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True,
                                  timeout=timeout_s or self.step_timeout_s + 10)
        except subprocess.TimeoutExpired as exc:
            raise SandboxError(f"{' '.join(argv)}: hung") from exc
        if done.returncode != 0:
            raise SandboxError(f"{' '.join(argv)}: exit {done.returncode}: "
                               f"{done.stderr.strip()}")
        return done.stdout

    def nbctl(self, *args: str) -> str:
        return self._run([self.tools["ovn-nbctl"], f"--db={self.nb_remote}",
                          f"--timeout={self.step_timeout_s:.0f}", *args])

    def sbctl(self, *args: str, remote: str | None = None) -> str:
        return self._run([self.tools["ovn-sbctl"], f"--db={remote or self.sb_remote}",
                          f"--timeout={self.step_timeout_s:.0f}", *args])

    def vsctl(self, ch: Chassis, *args: str) -> str:
        return self._run([self.tools["ovs-vsctl"], f"--db={ch.ovs_db}",
                          f"--timeout={self.step_timeout_s:.0f}", *args], env=ch.env)

    def add_port(self, ch: Chassis, switch: str, port: str, mac: str, ip: str) -> None:
        """A logical switch port in the NB and its VIF on the chassis (claimed by its
        ovn-controller)."""
        self.nbctl("--may-exist", "lsp-add", switch, port, "--", "lsp-set-addresses", port,
                   f"{mac} {ip}")
        self.bind_port(ch, port)

    def bind_port(self, ch: Chassis, port: str) -> None:
        self.vsctl(ch, "--may-exist", "add-port", "br-int", port, "--", "set", "interface",
                   port, "type=dummy", f"external_ids:iface-id={port}")

    def wait_hv(self) -> float:
        """``ovn-nbctl --wait=hv sync``; returns the seconds it took."""
        t0 = time.monotonic()
        self.nbctl("--wait=hv", "sync")
        return time.monotonic() - t0

    def wait_for(self, what: str, fn: Callable[[], bool], timeout_s: float | None = None
                 ) -> float:
        t0 = time.monotonic()
        limit = timeout_s or self.step_timeout_s
        while True:
            try:
                if fn():
                    return time.monotonic() - t0
            except SandboxError:
                pass
            if time.monotonic() - t0 > limit:
                raise SandboxError(f"not within {limit} s: {what}\n{self.diagnostics()}")
            time.sleep(0.05)

    # --- what the cloud looks like --------------------------------------------------------

    def registered(self, remote: str | None = None) -> set[str]:
        return set(self.sbctl("--bare", "--columns=name", "list", "Chassis",
                              remote=remote).split())

    def port_chassis(self, remote: str | None = None) -> dict[str, str]:
        """logical_port -> name of the chassis that claimed it ('' if none)."""
        names = {}
        for block in self.sbctl("--columns=_uuid,name", "list", "Chassis",
                                remote=remote).split("\n\n"):
            f = dict(_fields(block))
            if f:
                names[f["_uuid"]] = f["name"].strip('"')
        out = {}
        for block in self.sbctl("--columns=logical_port,chassis", "list", "Port_Binding",
                                remote=remote).split("\n\n"):
            f = dict(_fields(block))
            if f:
                out[f["logical_port"].strip('"')] = names.get(f["chassis"].strip("[]"), "")
        return out

    def openflow(self, ch: Chassis) -> Counter[str]:
        """The chassis's OpenFlow table as a multiset of normalized flows: no cookies,
        counters or durations; conntrack zone numbers (REG11-13 loads) as ``<zone>``
        (ovn-controller numbers zones in the hash order of datapath and port UUIDs, which
        differ between any two runs, ovsdb-server's included); port numbers as interface
        names and the outputs of a flood sorted (tunnels are numbered in the order their
        chassis were learned)."""
        text = self._run([self.tools["ovs-ofctl"], "--no-stats", "dump-flows",
                          f"unix:{ch.dir / 'br-int.mgmt'}"], env=ch.env)
        # Port numbers depend on the order ports (tunnels) were created: name them.
        names = {}
        listing = self.vsctl(ch, "--bare", "--columns=ofport,name", "list", "Interface")
        for block in listing.strip().split("\n\n"):
            fields = block.split()
            if len(fields) == 2:
                names[fields[0]] = fields[1]

        def port(m: re.Match[str]) -> str:
            return f"{m.group(1)}{names.get(m.group(2), m.group(2))}"

        flows: Counter[str] = Counter()
        for line in text.splitlines():
            line = re.sub(r"cookie=0x[0-9a-f]+,\s*", "", line.strip())
            line = _ZONE_RE.sub(r"load:<zone>->NXM_NX_REG1\1[]", line)
            line = re.sub(r"(in_port=|output:)(\d+)", port, line)
            # A flood's outputs come in tunnel order: sort each run of them.
            line = re.sub(r"(output:[^,\s]+)(,output:[^,\s]+)+", lambda m: ",".join(
                sorted(m.group(0).split(","))), line)
            if line and not line.startswith("NXST_FLOW"):
                flows[line] += 1
        return flows

    def node_status(self, ch: Chassis | None = None) -> dict[str, Any]:
        """The status a crdtdb node writes (``crdtdb status --json``): the central one's, or
        ``ch``'s."""
        data = (ch.dir if ch is not None else self.central_dir) / "data"
        return json.loads((data / "status.json").read_text())

    def logical_flows(self, remote: str | None = None) -> Counter[str]:
        text = self.sbctl("lflow-list", remote=remote)
        flows: Counter[str] = Counter()
        for line in text.splitlines():
            line = _UUID_RE.sub("<uuid>", line.strip())
            line = re.sub(r"uuid=0x[0-9a-f]+", "uuid=<x>", line)
            if line:
                flows[line] += 1
        return flows

    def diagnostics(self) -> str:
        parts = []
        for p in self._central:
            if not p.running:
                parts.append(f"{p.name} exited:\n{p.tail()}")
        for ch in self.chassis:
            for p in ch.procs:
                if not p.running:
                    parts.append(f"{p.name} exited:\n{p.tail()}")
        return "\n".join(parts) or "(every process is running)"

    def _wait_socket(self, path: Path, proc: _Proc) -> None:
        deadline = time.monotonic() + self.step_timeout_s
        while not path.exists():
            if not proc.running:
                raise SandboxError(f"{proc.name} exited:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise SandboxError(f"{proc.name}: no {path} after {self.step_timeout_s} s:\n"
                                   f"{proc.tail()}")
            time.sleep(0.02)

    def processes(self) -> dict[str, int]:
        """name -> pid of every running sandbox process: the central ones (``crdtdb`` or
        ``ovsdb-server``, ``ovn-northd``) and each chassis's (``hv1-crdtdb``, ``hv1-ovsdb``,
        ``hv1-vswitchd``, ``hv1-controller``)."""
        out = {}
        for p in [*self._central, *(q for ch in self.chassis for q in ch.procs)]:
            if p.proc is not None and p.running:
                out[p.name] = p.proc.pid
        return out


def _fields(block: str) -> list[tuple[str, str]]:
    out = []
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.append((key.strip(), value.strip()))
    return out


def run_sandbox(base_dir: Path, n_chassis: int, *, central: str, nb_plugin: str,
                ports_per_chassis: int, keep_running: bool, out: IO[str] = sys.stdout,
                compact_after_updates: int | None = None) -> int:
    """The ``crdtdb sandbox`` command: bring a cloud up, show it, keep it until Ctrl-C."""
    with Sandbox(base_dir, n_chassis, central=central, nb_plugin=nb_plugin,
                 compact_after_updates=compact_after_updates) as sb:
        print(f"{n_chassis} chassis up ({central}); NB {sb.nb_remote}", file=out)
        sb.nbctl("--may-exist", "ls-add", "sw0")
        for ch in sb.chassis:
            for j in range(ports_per_chassis):
                port = f"{ch.name}-p{j + 1}"
                sb.add_port(ch, "sw0", port, f"00:00:00:00:{ch.index + 1:02x}:{j + 1:02x}",
                            f"10.0.{ch.index + 1}.{j + 1}")
        took = sb.wait_hv()
        print(f"ovn-nbctl --wait=hv sync: {took * 1000:.0f} ms", file=out)
        print(sb.sbctl("show"), file=out)
        for ch in sb.chassis:
            print(f"{ch.name}: {sum(sb.openflow(ch).values())} OpenFlow flows; "
                  f"ovn-sbctl --db={ch.sb_remote} show", file=out)
        if keep_running:
            print(f"running (everything under {base_dir}); Ctrl-C to stop", file=out)
            signal.signal(signal.SIGTERM, _interrupt)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
