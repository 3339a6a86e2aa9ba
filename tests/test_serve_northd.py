"""Proof with ovn-northd: the real OVN control plane against crdtdb serve and ovsdb-server 3.1.

* ``test_northd_same_southbound``: ovn-northd 23.03 connected to crdtdb-served NB and SB
  computes the same Southbound (logical flows, datapaths, port bindings, multicast groups,
  load balancers, gateway chassis, port groups, address sets...) and writes the same back
  to the Northbound as against ovsdb-server, for one realistic NB script (switches, ports
  with static, dynamic and unknown addresses, a router with gateway chassis, static routes,
  NATs and a policy, load balancers on a switch and a router, ACLs on switches and port
  groups, address sets, QoS, then changes and deletions) plus two chassis and a port
  claimed through ovn-sbctl.  In two modes (``MODES``): "one-by-one", every ovn-nbctl
  command with ``--wait=sb`` (ovn-northd's nb_cfg/sb_cfg handshake through the server once
  per command, each change fully processed before the next, which keeps tunnel key
  allocation deterministic and lets the comparison be exact); and "bulk", the NB built in
  one transaction before ovn-northd starts (one large SB transaction and monitor update).
* ``test_northd_real_runs_agree``: the same scenario twice against ovsdb-server gives the
  same normalized contents, which shows that the normalization hides only what differs
  between two runs of ovsdb-server itself (see ``EXCLUDED`` and the ``BULK_`` tables).
* ``test_northd_lock_failover``: ovn-northd instances share the Southbound lock
  ``ovn_northd``; exactly one is active (sampled several times); after a SIGKILL the
  standby takes over within a bounded time and ``ovn-nbctl --wait=sb`` keeps working; a
  newcomer waits as standby and takes over in turn.  Also run against ovsdb-server, as a
  check of the test itself.

Contents are fetched with a ``select`` of every table and compared as sorted lines, one
per row, with every reference (and every UUID inside a string, such as
``Datapath_Binding.external_ids:logical-switch`` or ``Logical_Flow``'s ``stage-hint``, the
first 32 bits of an NB row's UUID) replaced by a label derived from the referenced row's
content: ``<Datapath_Binding:sw0>``, ``<Port_Binding:sw0-p1>``,
``<Logical_DP_Group:lr0+sw0>``, or a hash of the row's content for rows with no natural
name.  So a Logical_Flow line is its pipeline, table, priority, match, actions and
external_ids with its datapath (or datapath group) named.

Every process is bounded (``--timeout`` on clients, a hard subprocess timeout, bounded
polls) and every process the tests start is stopped in a ``finally``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import NB_SCHEMA, SB_SCHEMA, need_ovn

from crdtdb.testing.crdtdb_server import CrdtdbServer, RealOvsdbServer, ServerUnderTest
from crdtdb.testing.ovsdb_server import die_with_parent

pytestmark = pytest.mark.ovsdb_server

NB = "OVN_Northbound"
SB = "OVN_Southbound"

#: Seconds one ovn-nbctl/ovn-sbctl/ovn-appctl command may take (their --timeout).
CLIENT_TIMEOUT = 10
#: Hard limit for one client process (a hang past --timeout).
PROCESS_TIMEOUT = 20.0
#: Seconds for ovn-northd to report the status we wait for (active, standby).
STATUS_TIMEOUT = 10.0
#: Seconds for the standby ovn-northd to become active after the active one is killed.
FAILOVER_TIMEOUT = 10.0

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_HEX8_RE = re.compile(r"[0-9a-f]{8}")


# -- the scenario ------------------------------------------------------------------------

#: Set before ovn-northd starts: otherwise it picks a random mac_prefix (used for dynamic
#: addresses) and a random svc_monitor_mac (copied to SB_Global and into logical flows).
NB_GLOBAL_OPTIONS = ("set NB_Global . options:mac_prefix=0a:00:00"
                     " options:svc_monitor_mac=0a:00:00:00:00:fe")

#: Chassis created in the Southbound (as ovn-controller would) before the NB script.
SB_CHASSIS = (
    "chassis-add ch1 geneve 192.0.2.1",
    "chassis-add ch2 geneve 192.0.2.2",
)

#: ovn-nbctl commands, one invocation per line (shlex syntax): the NB to build...
NB_SETUP = (
    "ls-add sw0",
    "ls-add sw1",
    "ls-add ext",
    "set Logical_Switch sw1 other_config:subnet=10.0.1.0/24 other_config:exclude_ips=10.0.1.1",
    'lsp-add sw0 sw0-p1 -- lsp-set-addresses sw0-p1 "00:00:00:00:00:01 10.0.0.11"'
    ' -- lsp-set-port-security sw0-p1 "00:00:00:00:00:01 10.0.0.11"',
    'lsp-add sw0 sw0-p2 -- lsp-set-addresses sw0-p2 "00:00:00:00:00:02 10.0.0.12"',
    'lsp-add sw0 sw0-p3 -- lsp-set-addresses sw0-p3 "00:00:00:00:00:03 10.0.0.13" unknown',
    "lsp-add sw1 sw1-p1 -- lsp-set-addresses sw1-p1 dynamic",
    'lsp-add sw1 sw1-p2 -- lsp-set-addresses sw1-p2 "00:00:00:00:01:02 10.0.1.12"',
    "lsp-add ext ext-localnet -- lsp-set-type ext-localnet localnet"
    " -- lsp-set-addresses ext-localnet unknown"
    " -- lsp-set-options ext-localnet network_name=phys",
    "lr-add lr0",
    "lrp-add lr0 lr0-sw0 00:00:00:00:ff:01 10.0.0.1/24",
    "lrp-add lr0 lr0-sw1 00:00:00:00:ff:02 10.0.1.1/24 2001:db8:1::1/64",
    "lrp-add lr0 lr0-ext 00:00:00:00:ff:03 172.16.0.1/24",
    "lsp-add sw0 sw0-lr0 -- lsp-set-type sw0-lr0 router -- lsp-set-addresses sw0-lr0 router"
    " -- lsp-set-options sw0-lr0 router-port=lr0-sw0",
    "lsp-add sw1 sw1-lr0 -- lsp-set-type sw1-lr0 router -- lsp-set-addresses sw1-lr0 router"
    " -- lsp-set-options sw1-lr0 router-port=lr0-sw1",
    "lsp-add ext ext-lr0 -- lsp-set-type ext-lr0 router -- lsp-set-addresses ext-lr0 router"
    " -- lsp-set-options ext-lr0 router-port=lr0-ext",
    "lrp-set-gateway-chassis lr0-ext ch1 20",
    "lrp-set-gateway-chassis lr0-ext ch2 10",
    "lr-route-add lr0 0.0.0.0/0 172.16.0.254",
    "lr-route-add lr0 192.168.0.0/16 10.0.1.254",
    "lr-nat-add lr0 snat 172.16.0.1 10.0.0.0/24",
    "lr-nat-add lr0 dnat_and_snat 172.16.0.11 10.0.0.11",
    'lr-policy-add lr0 100 "ip4.src == 10.0.1.0/24 && ip4.dst == 192.168.0.0/16" drop',
    "lb-add lb0 30.0.0.1:80 10.0.0.11:80,10.0.0.12:80 tcp",
    "ls-lb-add sw0 lb0",
    "lb-add lb1 172.16.0.100 10.0.1.12",
    "lr-lb-add lr0 lb1",
    "create Address_Set name=as_web addresses='\"10.0.0.11\",\"10.0.0.12\"'",
    "pg-add pg_web sw0-p1 sw0-p2",
    'acl-add sw0 from-lport 1000 "ip4.src == 10.0.0.13" allow-related',
    'acl-add pg_web to-lport 1002 "outport == @pg_web && ip4.src == $as_web && tcp.dst == 80"'
    " allow-related",
    'acl-add pg_web to-lport 1001 "outport == @pg_web && ip4" drop',
    '--log --severity=alert --name=ssh acl-add sw1 to-lport 900 "tcp.dst == 22" reject',
    'qos-add sw0 from-lport 100 "ip4.src == 10.0.0.12" dscp=10',
)
#: ... then changes and deletions, which ovn-northd handles incrementally.
NB_CHANGES = (
    "add Address_Set as_web addresses 10.0.0.13",
    'lsp-set-addresses sw0-p2 "00:00:00:00:00:22 10.0.0.22"',
    "lsp-del sw0-p3",
    "lr-nat-add lr0 dnat 172.16.0.12 10.0.0.12",
    "lr-nat-del lr0 dnat 172.16.0.12",
    "ls-add tmp -- lsp-add tmp tmp-p1 -- lsp-set-addresses tmp-p1 00:00:00:00:02:01",
    "ls-del tmp",
    "lb-add lb2 30.0.0.3:53 10.0.1.12:53 udp -- ls-lb-add sw1 lb2",
    "ls-lb-del sw1 lb2 -- lb-del lb2",
)

#: After the NB script: claim a port as ovn-controller would (Port_Binding.chassis), which
#: ovn-northd reflects in the NB (Logical_Switch_Port.up).
SB_CLAIM = "lsp-bind sw0-p1 ch1"

#: Columns left out of the comparison, because they differ between two runs of the same
#: scenario against ovsdb-server itself (``test_northd_real_runs_agree`` checks that these
#: suffice):
EXCLUDED: dict[tuple[str, str], frozenset[str]] = {
    # Wall-clock times (ms) at which ovn-northd saw nb_cfg/sb_cfg/hv_cfg change.
    (NB, "NB_Global"): frozenset({"nb_cfg_timestamp", "sb_cfg_timestamp", "hv_cfg_timestamp"}),
}

#: In "bulk" mode ovn-northd meets the whole NB at once, and then some choices follow the
#: order of its hash tables, that is of the rows' random UUIDs:
BULK_PERMUTED: dict[tuple[str, str], frozenset[str]] = {
    # Tunnel keys are handed out walking the datapaths in hash order: which datapath gets
    # which key varies, the set of keys does not.  Compared only as a multiset.
    (SB, "Datapath_Binding"): frozenset({"tunnel_key"}),
}
BULK_EXCLUDED: dict[tuple[str, str], frozenset[str]] = {
    # The same for each datapath's ports; and not even the set of keys is the same, since
    # NB_CHANGES deletes a port, whose key (which varies) is then missing.
    (SB, "Port_Binding"): frozenset({"tunnel_key"}),
}
BULK_EXCLUDED_KEYS: dict[tuple[str, str, str], frozenset[str]] = {
    # When two places in northd.c build the same flow, the one that runs first (hash order)
    # names itself in external_ids:source; the other one is dropped as a duplicate.
    (SB, "Logical_Flow", "external_ids"): frozenset({"source"}),
}

#: How the NB script reaches ovn-northd:
MODES = {
    "one-by-one": "ovn-northd runs from the start; every ovn-nbctl command is its own "
                  "transaction with --wait=sb, so the SB is built one change at a time, "
                  "and nothing in it is excluded from the comparison",
    "bulk": "NB_SETUP is one transaction before ovn-northd starts (as when it restarts or "
            "fails over on a populated NB), so its first run writes the whole SB in one "
            "transaction (see BULK_PERMUTED, BULK_EXCLUDED...); NB_CHANGES follow one "
            "by one",
}


# -- processes ---------------------------------------------------------------------------


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=PROCESS_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{shlex.join(argv)} hung for {PROCESS_TIMEOUT} s: {exc.stderr!r}")


def ctl(tool: str, server: ServerUnderTest, line: str, *options: str) -> str:
    """Run ``tool --db=SERVER --timeout=N OPTIONS LINE``; fail unless it succeeds."""
    argv = [tool, f"--db={server.remote}", f"--timeout={CLIENT_TIMEOUT}", *options,
            *shlex.split(line)]
    done = _run(argv)
    if done.returncode != 0:
        pytest.fail(f"{tool} {' '.join(options)} {line}: exit {done.returncode}\n"
                    f"{done.stdout}{done.stderr}\nserver log:\n{server.log_tail()}")
    return done.stdout


def nbctl(server: ServerUnderTest, line: str) -> str:
    """``ovn-nbctl --wait=sb LINE``: returns once ovn-northd has brought the SB up to date."""
    return ctl("ovn-nbctl", server, line, "--wait=sb")


class Northd:
    """One ovn-northd process on a server's NB and SB, in the foreground."""

    def __init__(self, name: str, server: ServerUnderTest, workdir: Path, ctl_dir: Path) -> None:
        self.name = name
        self.server = server
        self.log_path = workdir / f"{name}.log"
        self.console_path = workdir / f"{name}.console"
        self.ctl_path = ctl_dir / f"{name}.ctl"  # a short path: unix socket
        self.pid_path = workdir / f"{name}.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Northd:
        workdir = self.log_path.parent
        workdir.mkdir(parents=True, exist_ok=True)
        with self.console_path.open("ab") as console:
            self.proc = subprocess.Popen(
                [need_ovn("ovn-northd")["ovn-northd"],
                 f"--ovnnb-db={self.server.remote}", f"--ovnsb-db={self.server.remote}",
                 "--no-chdir", f"--log-file={self.log_path}", f"--pidfile={self.pid_path}",
                 f"--unixctl={self.ctl_path}"],
                cwd=workdir, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                preexec_fn=die_with_parent,
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> str:
        """"active", "standby" or "paused" (``ovn-appctl status``); "dead" if it exited;
        "?" while its control socket is not up yet."""
        if not self.running:
            return "dead"
        if not self.ctl_path.exists():
            return "?"
        done = _run(["ovn-appctl", f"--timeout={CLIENT_TIMEOUT}", "-t", str(self.ctl_path),
                     "status"])
        m = re.search(r"^Status: (\w+)", done.stdout, re.M)
        return m.group(1) if m else "?"

    def wait_status(self, wanted: str, timeout: float = STATUS_TIMEOUT) -> float:
        """Poll (bounded) until status() is ``wanted``; returns the seconds it took."""
        start = time.monotonic()
        while (status := self.status()) != wanted:
            if status == "dead" or time.monotonic() - start > timeout:
                pytest.fail(f"{self.name}: status {status!r}, not {wanted!r}, after "
                            f"{time.monotonic() - start:.1f} s\n{self.log_tail()}\n"
                            f"server log:\n{self.server.log_tail()}")
            time.sleep(0.02)
        return time.monotonic() - start

    def kill(self) -> None:
        """SIGKILL: no goodbye to the server, which must notice the closed connection."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()

    def problems(self) -> list[str]:
        """Warnings and errors in its log (bad updates, lost connections, ...)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return [f"(no log: {exc})"]
        return [ln for ln in lines if re.search(r"\|(WARN|ERR|EMER)\|", ln)]

    def assert_healthy(self) -> None:
        """Still running, and nothing in its log above INFO."""
        assert self.running, self.log_tail()
        assert not self.problems(), f"{self.name}:\n" + "\n".join(self.problems())

    def log_tail(self, n_lines: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
            lines += self.console_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no log: {exc})"
        return f"{self.name} log:\n" + "\n".join(lines[-n_lines:])


@contextlib.contextmanager
def northd_launcher(server: ServerUnderTest, workdir: Path) -> Iterator[Callable[[str], Northd]]:
    """``start(name)`` starts an ovn-northd; all are stopped (SIGTERM, then SIGKILL) on exit."""
    ctl_dir = Path(tempfile.mkdtemp(prefix="northd-"))
    started: list[Northd] = []

    def start(name: str) -> Northd:
        northd = Northd(name, server, workdir, ctl_dir)
        started.append(northd)
        return northd.start()

    try:
        yield start
    finally:
        for northd in started:
            northd.stop()
        shutil.rmtree(ctl_dir, ignore_errors=True)


def make_server(kind: str, workdir: Path) -> CrdtdbServer | RealOvsdbServer:
    schemas = [NB_SCHEMA, SB_SCHEMA]
    if kind == "crdtdb":
        return CrdtdbServer(schemas, workdir)
    return RealOvsdbServer(schemas, workdir)


def assert_server_healthy(server: CrdtdbServer | RealOvsdbServer) -> None:
    """Still running; crdtdb serve logged no error or traceback."""
    assert server.running, server.log_tail()
    if isinstance(server, CrdtdbServer):
        log = server.log_path.read_text(errors="replace")
        bad = [ln for ln in log.splitlines() if " ERROR " in ln or "Traceback" in ln]
        assert not bad, "\n".join(bad)


# -- fetching and normalizing ------------------------------------------------------------

#: uuid -> (database, table, columns without _uuid and _version)
Rows = dict[str, tuple[str, str, dict[str, Any]]]


def fetch(server: ServerUnderTest, db: str) -> Rows:
    with server.client(timeout=CLIENT_TIMEOUT) as client:
        tables = sorted(client.get_schema(db)["tables"])
        results = client.transact(db, [{"op": "select", "table": t, "where": []}
                                       for t in tables])
    rows: Rows = {}
    for table, result in zip(tables, results, strict=True):
        assert "rows" in result, (table, result)
        for row in result["rows"]:
            uuid = row.pop("_uuid")[1]
            row.pop("_version", None)
            rows[uuid] = (db, table, row)
    return rows


@functools.cache
def _shared_tables() -> frozenset[str]:
    """Tables both schemas have (Load_Balancer, Address_Set...): their labels name the
    database."""
    nb, sb = (set(json.loads(p.read_text())["tables"]) for p in (NB_SCHEMA, SB_SCHEMA))
    return frozenset(nb & sb)


class Labeller:
    """Names every row by its content (see the module docstring)."""

    def __init__(self, rows: Rows) -> None:
        self.rows = rows
        self.labels: dict[str, str] = {u: f"<{table}>" for u, (_, table, _) in rows.items()}
        self.prefixes: dict[str, str] = {}
        for _ in range(8):  # references are a few levels deep; 8 rounds is plenty
            new = self._relabel()
            if new == self.labels:
                break
            self.labels = new
        else:
            raise AssertionError("row labels did not converge")
        for u, (db, _, _) in rows.items():
            if db == NB:
                self.prefixes[u[:8]] = self.labels[u]

    def _ref(self, value: Any) -> str:
        return self.labels.get(value[1], "<dangling>") if isinstance(value, list) else "?"

    def _ref_key(self, value: Any) -> str:
        """The key part of a referenced row's label (``sw0`` for ``<Datapath_Binding:sw0>``)."""
        return self._ref(value).rstrip(">").split(":", 1)[-1]

    def _natural_key(self, table: str, cols: dict[str, Any]) -> str | None:
        if table == "Datapath_Binding":
            return dict(cols["external_ids"][1]).get("name")
        if table == "Logical_DP_Group":
            members = cols["datapaths"]
            uuids = members[1] if members[0] == "set" else [members]
            return "+".join(sorted(self._ref_key(u) for u in uuids))
        if table == "Multicast_Group":
            return f"{self._ref_key(cols['datapath'])}/{cols['name']}"
        if table == "IP_Multicast":
            return self._ref_key(cols["datapath"])
        if table == "Encap":
            return f"{cols['chassis_name']}/{cols['type']}/{cols['ip']}"
        for column in ("name", "logical_port"):
            if isinstance(cols.get(column), str) and cols[column]:
                return str(cols[column])
        return None

    def _relabel(self) -> dict[str, str]:
        keyed: dict[str, tuple[str, str | None]] = {}
        for u, (db, table, cols) in self.rows.items():
            if table in _shared_tables():
                table = f"{'NB' if db == NB else 'SB'}.{table}"
            keyed[u] = (table, self._natural_key(table.split(".")[-1], cols))
        counts: dict[tuple[str, str | None], int] = {}
        for key in keyed.values():
            counts[key] = counts.get(key, 0) + 1
        new: dict[str, str] = {}
        seen: dict[str, int] = {}
        for u in sorted(self.rows, key=lambda u: self._signature(u)):
            table, key = keyed[u]
            if key is not None and counts[(table, key)] == 1:
                label = f"<{table}:{key}>"
            else:
                digest = hashlib.sha1(self._signature(u).encode()).hexdigest()[:8]
                label = f"<{table}:{key}#{digest}>" if key else f"<{table}#{digest}>"
                # Rows with identical content are interchangeable: number them.
                n = seen[label] = seen.get(label, 0) + 1
                if n > 1:
                    label = f"{label[:-1]}~{n}>"
            new[u] = label
        return new

    def _signature(self, uuid: str) -> str:
        db, table, cols = self.rows[uuid]
        return f"{db}.{table}{json.dumps(self.canonical(cols), sort_keys=True)}"

    def canonical(self, value: Any, key: Any = None) -> Any:
        """A value with references and UUIDs in strings replaced by labels; sets sorted,
        maps as sorted [key, value] pairs."""
        if isinstance(value, list) and len(value) == 2 and value[0] == "uuid":
            return self._ref(value)
        if isinstance(value, list) and len(value) == 2 and value[0] == "set":
            return sorted((self.canonical(v) for v in value[1]), key=json.dumps)
        if isinstance(value, list) and len(value) == 2 and value[0] == "map":
            pairs = [[self.canonical(k), self.canonical(v, k)] for k, v in value[1]]
            return sorted(pairs, key=json.dumps)
        if isinstance(value, dict):
            return {k: self.canonical(v) for k, v in value.items()}
        if isinstance(value, str):
            if key == "stage-hint" and _HEX8_RE.fullmatch(value):
                # The first 32 bits of the NB row's UUID that made the flow.
                return self.prefixes.get(value, "<unknown-stage-hint>")
            return UUID_RE.sub(lambda m: self.labels.get(m.group(0).lower(),
                                                          "<unknown-uuid>"), value)
        return value


#: Columns shown first, in this order (the rest follow sorted), so that sorted lines group
#: the flows of one datapath and stage together, as ``ovn-sbctl lflow-list`` does.
_LEADING_COLUMNS = {
    "Logical_Flow": ("logical_datapath", "logical_dp_group", "pipeline", "table_id",
                     "priority", "match", "actions"),
}


def normalized(rows: Rows, mode: str) -> str:
    """Every table of both databases as sorted lines, one per row: ``<label> {columns}``,
    or just ``{columns}`` where the label is a hash of the columns; then, for ``mode``'s
    permuted columns, the multiset of their values."""
    bulk = mode == "bulk"
    kept: Rows = {}
    permuted: dict[tuple[str, str, str], list[Any]] = {}
    # A SB Port_Group is named "<tunnel key of its datapath>_<NB name>": name the datapath
    # instead (its key is compared with the Datapath_Binding).
    dp_names = {str(cols["tunnel_key"]): dict(cols["external_ids"][1]).get("name", "?")
                for _, table, cols in rows.values() if table == "Datapath_Binding"}
    for u, (db, table, cols) in rows.items():
        if db == SB and table == "Port_Group":
            key, sep, name = cols["name"].partition("_")
            cols = {**cols, "name": f"[{dp_names.get(key, '?')}]{sep}{name}"}
        excluded = EXCLUDED.get((db, table), frozenset())
        if bulk:
            excluded |= BULK_EXCLUDED.get((db, table), frozenset())
        shuffled = BULK_PERMUTED.get((db, table), frozenset()) if bulk else frozenset()
        kept_cols = {}
        for c, v in cols.items():
            drop_keys = BULK_EXCLUDED_KEYS.get((db, table, c)) if bulk else None
            if c in shuffled:
                permuted.setdefault((db, table, c), []).append(v)
            elif drop_keys and v[0] == "map":
                kept_cols[c] = ["map", [kv for kv in v[1] if kv[0] not in drop_keys]]
            elif c not in excluded:
                kept_cols[c] = v
        kept[u] = (db, table, kept_cols)
    labeller = Labeller(kept)
    tables: dict[tuple[str, str], list[str]] = {}
    for u, (db, table, cols) in kept.items():
        leading = [c for c in _LEADING_COLUMNS.get(table, ()) if c in cols]
        order = [*leading, *sorted(set(cols) - set(leading))]
        text = json.dumps({c: labeller.canonical(cols[c]) for c in order})
        label = labeller.labels[u]
        tables.setdefault((db, table), []).append(text if "#" in label else f"{label} {text}")
    out = []
    for (db, table), lines in sorted(tables.items()):
        out.append(f"== {db}.{table}: {len(lines)} rows")
        out.extend(sorted(lines))
    for (db, table, column), values in sorted(permuted.items()):
        out.append(f"== {db}.{table}.{column} (as a multiset): {sorted(values)}")
    return "\n".join(out) + "\n"


def assert_same(real: str, ours: str, what: str, sides: tuple[str, str]) -> None:
    """Compare normalized contents; with $CRDTDB_CLIENT_TRANSCRIPTS set to a directory,
    both are also written there."""
    out_dir = os.environ.get("CRDTDB_CLIENT_TRANSCRIPTS")
    if out_dir:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", what)[:100]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"{stem}.{sides[0]}.txt").write_text(real)
        (Path(out_dir) / f"{stem}.{sides[1]}.txt").write_text(ours)
    if real == ours:
        return
    diff = "".join(difflib.unified_diff(real.splitlines(True), ours.splitlines(True),
                                        *sides, n=1))
    lines = [ln if len(ln) <= 500 else ln[:500] + "...\n" for ln in diff.splitlines(True)]
    if len(lines) > 120:
        lines = [*lines[:120], f"... ({len(lines) - 120} more diff lines)\n"]
    pytest.fail(f"{what}: {sides[1]} differs from {sides[0]}:\n{''.join(lines)}",
                pytrace=False)


# -- test 1: the same Southbound ---------------------------------------------------------


def run_scenario(kind: str, workdir: Path, mode: str) -> tuple[str, Rows]:
    """Start a server and ovn-northd, run the scripts (see MODES), and return the
    normalized NB and SB (and the raw rows, for sanity checks)."""
    need_ovn("ovn-northd", "ovn-nbctl", "ovn-sbctl", "ovn-appctl")
    with make_server(kind, workdir) as server, northd_launcher(server, workdir) as start:
        ctl("ovn-nbctl", server, "init")
        ctl("ovn-nbctl", server, NB_GLOBAL_OPTIONS)
        for line in SB_CHASSIS:
            ctl("ovn-sbctl", server, line)
        one_by_one = NB_SETUP + NB_CHANGES
        if mode == "bulk":
            ctl("ovn-nbctl", server, " -- ".join(NB_SETUP))
            one_by_one = NB_CHANGES
        northd = start("northd")
        northd.wait_status("active")
        nbctl(server, "sync")
        for line in one_by_one:
            nbctl(server, line)
        ctl("ovn-sbctl", server, SB_CLAIM)
        # ovn-northd sees the claim on its SB connection and sets the port "up" in the NB;
        # wait for that (bounded by --timeout), then for one more NB->SB round.
        ctl("ovn-nbctl", server, "wait-until Logical_Switch_Port sw0-p1 up=true")
        nbctl(server, "sync")
        rows = fetch(server, NB) | fetch(server, SB)
        northd.assert_healthy()
        assert_server_healthy(server)
    return normalized(rows, mode), rows


def _sanity_check(rows: Rows) -> None:
    """The scenario did what it claims (so that equal contents mean something)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for db, table, cols in rows.values():
        tables.setdefault(f"{'NB' if db == NB else 'SB'}.{table}", []).append(cols)
    datapaths = {dict(c["external_ids"][1]).get("name") for c in tables["SB.Datapath_Binding"]}
    assert datapaths == {"sw0", "sw1", "ext", "lr0"}, datapaths
    bindings = {c["logical_port"]: c for c in tables["SB.Port_Binding"]}
    assert {"sw0-p1", "sw1-p1", "lr0-ext", "cr-lr0-ext", "ext-localnet"} <= set(bindings)
    assert not {"sw0-p3", "tmp-p1"} & set(bindings)
    assert bindings["sw0-p1"]["chassis"][0] == "uuid", bindings["sw0-p1"]
    assert len(tables["SB.Logical_Flow"]) > 200, len(tables["SB.Logical_Flow"])
    assert any("10.0.0.22" in c["match"] for c in tables["SB.Logical_Flow"])
    assert {c["name"] for c in tables["SB.Load_Balancer"]} == {"lb0"}
    assert len(tables["SB.HA_Chassis"]) == 2
    ports = {c["name"]: c for c in tables["NB.Logical_Switch_Port"]}
    assert ports["sw1-p1"]["dynamic_addresses"] != ["set", []], ports["sw1-p1"]
    assert ports["sw0-p1"]["up"] is True, ports["sw0-p1"]


@pytest.mark.parametrize("mode", list(MODES))
def test_northd_same_southbound(mode: str, tmp_path: Path) -> None:
    real, real_rows = run_scenario("ovsdb-server", tmp_path / "real", mode)
    _sanity_check(real_rows)
    ours, _ = run_scenario("crdtdb", tmp_path / "crdtdb", mode)
    assert_same(real, ours, f"ovn-northd NB+SB contents ({mode})", ("ovsdb-server", "crdtdb"))


@pytest.mark.parametrize("mode", list(MODES))
def test_northd_real_runs_agree(mode: str, tmp_path: Path) -> None:
    first, _ = run_scenario("ovsdb-server", tmp_path / "real1", mode)
    second, _ = run_scenario("ovsdb-server", tmp_path / "real2", mode)
    assert_same(first, second, f"ovn-northd NB+SB contents ({mode}), two ovsdb-server runs",
                ("ovsdb-server#1", "ovsdb-server#2"))


# -- test 2: the ovn_northd lock ---------------------------------------------------------


def _datapaths(server: ServerUnderTest) -> set[str]:
    return {dict(cols["external_ids"][1]).get("name", "")
            for _, table, cols in fetch(server, SB).values() if table == "Datapath_Binding"}


def _assert_one_active(northds: list[Northd], active: Northd, samples: int = 5) -> None:
    """Sample the status of every live ovn-northd a few times: ``active`` is the only
    active one each time, the others are standby."""
    for _ in range(samples):
        statuses = {n.name: n.status() for n in northds}
        expected = {n.name: "active" if n is active else "standby" for n in northds}
        assert statuses == expected, "\n".join(n.log_tail() for n in northds)
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["ovsdb-server", "crdtdb"])
def test_northd_lock_failover(kind: str, tmp_path: Path) -> None:
    need_ovn("ovn-northd", "ovn-nbctl", "ovn-appctl")
    with make_server(kind, tmp_path) as server, northd_launcher(server, tmp_path) as start:
        ctl("ovn-nbctl", server, "init")
        a = start("northd-a")
        a.wait_status("active")
        b = start("northd-b")
        b.wait_status("standby")
        _assert_one_active([a, b], a)
        nbctl(server, "ls-add sw-a")
        assert _datapaths(server) == {"sw-a"}

        # The owner dies without a word: the server sees the connection close and hands
        # the lock to the waiter, which takes over the Southbound.
        a.kill()
        took = b.wait_status("active", timeout=FAILOVER_TIMEOUT)
        nbctl(server, "ls-add sw-b")
        assert _datapaths(server) == {"sw-a", "sw-b"}, f"failover took {took:.2f} s"

        # A newcomer queues behind the new owner; the lock moves again when that one dies.
        c = start("northd-c")
        c.wait_status("standby")
        _assert_one_active([b, c], b)
        nbctl(server, "ls-del sw-a")
        assert _datapaths(server) == {"sw-b"}
        b.kill()
        c.wait_status("active", timeout=FAILOVER_TIMEOUT)
        _assert_one_active([c], c)
        nbctl(server, "ls-add sw-c")
        nbctl(server, "sync")
        assert _datapaths(server) == {"sw-b", "sw-c"}
        # The killed instances may have logged nothing alarming either before they died.
        for northd in (a, b):
            assert not northd.problems(), northd.log_tail()
        c.assert_healthy()
        assert_server_healthy(server)
