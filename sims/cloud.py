"""Seeded, deterministic simulations of an OVN cloud on crdtdb nodes.

N real nodes (engine, replica, gossip, the node loop) on the memory transport under trio's
MockClock, each with a simulated disk. Node 0 plays ovn-northd (datapaths, port bindings,
logical flows, nb_cfg); every node plays a chassis (registers Chassis/Encap/Chassis_Private,
claims the ports requested for it, reports nb_cfg, learns MAC bindings). The Southbound is a
gossiped replica on every node.

The Northbound is linearizable: on every node a :class:`~crdtdb.consensus.LinearizableDatabase`
whose plugin is :mod:`sims.simconsensus` (a Raft group of simulated members hosted on the
first nodes, on the same simulated network). CMS-like clients on the first nodes read, write
and compare-and-set registers (NB_Global's nb_cfg, Logical_Switch external_ids) through
their own node, each transaction committed through the plugin as the server core does; every
call and return goes into a history for the linearizability checker.

A seeded fault phase (partitions, loss, delay spikes, crashes with restarts, clock jumps) is
followed by a healed phase that must converge. Then the checks: all views identical and
valid, no acknowledged write lost, every hidden row accounted for as a conflict; the
Northbound history linearizable, every node's Northbound cache the same, no committed entry
lost.

One seed fully determines a run: same seed, same trace hash (run with PYTHONHASHSEED=0, as
``crdtdb sim`` does). Every failure says "reproduce with seed=N".
"""

from __future__ import annotations

import hashlib
import itertools
import random
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from crdtdb.consensus.commit import Applied, CommitRequest, Failed
from crdtdb.engine import DatabaseSchema, integrity
from crdtdb.gossip import GossipConfig
from crdtdb.node import open_node
from crdtdb.replica import EpochId, EpochOrigin, Replica
from crdtdb.replica.conflicts import ROW_KINDS
from crdtdb.replica.envelope import decode_state_vector, open_sealed, single_writer_span
from crdtdb.testing.linearizability import HistoryRecorder, KeyValueModel, check
from sims.simconsensus import (
    LEADER,
    UNKNOWN_OUTCOME,
    Member,
    MemberDisk,
    NbClient,
    Stats,
    Timing,
)
from sims.simdisk import SimLog
from transport.memory import LinkFaults, MemoryNetwork

SB = "OVN_Southbound"
NB = "OVN_Northbound"
#: The Northbound registers of the history: NB_Global's nb_cfg (bumped by compare-and-set,
#: as ``ovn-nbctl --wait`` does) and the value "v" of some Logical_Switch rows' external_ids.
NB_SWITCHES = ("ls0", "ls1", "ls2")
NB_KEYS = ("nb_cfg", *NB_SWITCHES)
#: Conflicts in a row before a Northbound transaction gives up ("try again").
NB_MAX_RETRIES = 20
PROFILES = ("none", "halves", "minority", "one-way", "flapping", "loss", "delay", "crash",
            "clock-jump", "mixed")
#: at most this many propagation times are kept in the result (a uniform sample of them)
MAX_PROPAGATION_SAMPLES = 10_000
#: the divergence series: one point every DIVERGENCE_INTERVAL_S simulated seconds from the
#: start of the fault phase; past DIVERGENCE_MAX_POINTS, every other point is dropped and
#: the interval doubles (so a long run keeps a coarser series of bounded length)
DIVERGENCE_INTERVAL_S = 0.25
DIVERGENCE_MAX_POINTS = 1000


@dataclass
class SimConfig:
    seed: int
    nodes: int = 5
    #: the fault phase, simulated seconds (the workload runs during it)
    fault_s: float = 10.0
    #: how long the healed phase may take to converge before the run counts as failed
    heal_limit_s: float = 60.0
    profile: str | None = None  # None: drawn from the seed
    degree: int = 4
    datapaths: int = 3
    #: each chassis agent's pause between rounds (claim ports, report nb_cfg, maybe learn a
    #: MAC binding), drawn uniformly: the Southbound's write rate grows with N through it,
    #: and every write is applied on every node (a longer pause makes large N affordable)
    chassis_period_s: tuple[float, float] = (0.3, 1.0)
    schema_path: str = "/usr/share/ovn/ovn-sb.ovsschema"
    nb_schema_path: str = "/usr/share/ovn/ovn-nb.ovsschema"
    #: consensus members of the Northbound; member i is hosted on node i (mod nodes)
    nb_members: int = 3
    #: nodes 0..nb_clients-1 run a CMS-like Northbound client whose operations are checked
    nb_clients: int = 5
    #: wall seconds the linearizability checker may take before the verdict is "undecided"
    check_timeout_s: float = 30.0
    #: stop the run after this many wall seconds (None: never). A stopped run is incomplete
    #: (``completed`` false, nothing checked) and its cut-off point depends on the machine:
    #: for measuring the simulation's speed at large N only.
    wall_limit_s: float | None = None
    #: node 0 (ovn-northd's) coordinates a compaction round of the Southbound after this
    #: many changes (``crdtdb serve --compact-after-updates``; None: never)
    compact_after_updates: int | None = None


@dataclass
class SimResult:
    seed: int
    nodes: int
    profile: str
    trace_hash: str
    converged: bool
    convergence_s: float | None
    invariant_violations: list[str]
    lost_writes: int
    acknowledged_writes: int
    conflicts: dict[str, int]
    propagation_ms: dict[str, float | None]
    bytes_per_node: float
    frames: int
    crashes: int
    simulated_s: float
    #: the Northbound history passed the checker (None: undecided within the time limit)
    linearizable: bool | None = None
    nb_ops: int = 0
    nb_unknown_ops: int = 0
    #: completed Northbound transactions, call to return (retries and barriers included)
    nb_commit_ms: dict[str, float | None] = field(default_factory=dict)
    nb_settled: bool = False
    nb_elections: int = 0
    nb_retries: int = 0
    nb_bytes_per_node: float = 0.0
    nb_violations: list[str] = field(default_factory=list)
    #: the checker's explanation when the history is not linearizable
    nb_check_report: str | None = None
    #: propagation times (ms, sorted) of rows inserted after the warm-up: all of them, or a
    #: uniform sample of MAX_PROPAGATION_SAMPLES drawn with the run's RNG
    propagation_samples_ms: list[float] = field(default_factory=list)
    #: [[t_s, nodes], ...]: t_s simulated seconds since the fault phase began, nodes the
    #: number of nodes whose Southbound document differs from the most common one (by state
    #: vector, which determines the view), a node that is down counting as differing
    divergence: list[list[float]] = field(default_factory=list)
    #: when the fault phase ended (the heal), on the same time axis as ``divergence``
    heal_at_s: float | None = None
    #: False when the run was stopped by ``wall_limit_s`` (then nothing was checked)
    completed: bool = True
    #: the phase a stopped run was in ("warm-up", "fault", "healed", "check")
    stopped_in: str | None = None
    #: phase -> [simulated s, wall s since the run began] when it began (speed per phase)
    phase_starts: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0
    #: compaction (``compact_after_updates``): the newest epoch reached, and how many times
    #: a node made its writes past a cut again after moving
    epochs: int = 0
    recommits: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pin_determinism(seed: int) -> None:
    """trio schedules deterministically only when told to (private API, pinned trio)."""
    import trio._core._run as trio_run

    if not hasattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING") or not hasattr(trio_run, "_r"):
        raise RuntimeError(f"trio {trio.__version__} has no deterministic scheduling switch; "
                           "simulations would not be reproducible (see pyproject's pin)")
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True
    trio_run._r.seed(seed)


class _HostFaults(LinkFaults):
    """Faults between hosts: an endpoint that is not a node (a node's Northbound client, a
    consensus member) is cut off, delayed and lost with the node that hosts it."""

    def __init__(self, *, host: dict[str, str], **kw: Any):
        super().__init__(**kw)
        self.host = host

    def blocked(self, a: str, b: str) -> bool:
        return super().blocked(self.host.get(a, a), self.host.get(b, b))


class _Node:
    def __init__(self, sim: Simulation, i: int):
        self.sim = sim
        self.i = i
        self.name = f"hv{i}"
        self.nb_name = f"{self.name}:nb"
        self.rng = random.Random(sim.rng.random())
        self.disk = SimLog(self.name)
        self.replica: Replica | None = None
        self.crashed = trio.Event()
        self.up = False
        self.chassis: str | None = None
        self.life = 0
        self.nb: NbClient | None = None
        self.nb_lock = trio.Lock()
        #: the consensus members this node hosts (they crash with it)
        self.members = [m for m in sim.nb_members if sim.host[m] == self.name]

    def new_uuid(self) -> str:
        return str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))

    def open_replica(self) -> Replica:
        self.disk.reopen()
        r = Replica.open_log(self.disk, self.sim.schema, fsync=True,
                             rng=random.Random(self.rng.random()), new_uuid=self.new_uuid)
        r.add_listener(self.sim._recorder(self.name, r))
        self.replica = r
        return r

    def transact(self, ops: list[Any]) -> list[Any] | None:
        if not self.up or self.replica is None or self.replica.frozen:
            return None  # (held by a compaction round: the agent tries again next round)
        results = self.replica.transact(ops)
        self.sim.commits += 1
        return results

    async def run(self) -> None:
        """The node's life: up until crashed, down for a while, up again (replayed)."""
        sim = self.sim
        while True:
            self.crashed = trio.Event()
            self.life += 1
            replica = self.open_replica()
            transport = sim.net.revive(self.name)
            async with AsyncExitStack() as stack:
                compact = sim.config.compact_after_updates if self.i == 0 else None
                await stack.enter_async_context(open_node(
                    {SB: replica}, node_id=self.name, transport=transport,
                    rng=random.Random(self.rng.random()),
                    gossip_config=GossipConfig(compact_after_updates=compact)))
                self.nb = NbClient(self.nb_name, sim.nb_members, sim.net.revive(self.nb_name),
                                   sim.nb_schema, life=self.life,
                                   rng=random.Random(self.rng.random()), timing=sim.nb_timing,
                                   stats=sim.nb_stats, new_uuid=self.new_uuid)
                self.nb_lock = trio.Lock()
                self.up = True
                async with trio.open_nursery() as n:
                    for name in self.members:
                        member = Member(name, sim.nb_members, sim.nb_disks[name],
                                        sim.net.revive(name),
                                        rng=random.Random(self.rng.random()),
                                        timing=sim.nb_timing, stats=sim.nb_stats)
                        sim.nb_live[name] = member
                        n.start_soon(member.run)
                    n.start_soon(self.nb.run)
                    n.start_soon(self.chassis_agent)
                    if self.i == 0:
                        n.start_soon(self.northd)
                    if self.i < sim.config.nb_clients:
                        n.start_soon(self.nb_agent)
                    await self.crashed.wait()
                    n.cancel_scope.cancel()
            self.up = False
            self.disk.crash()
            for name in (self.name, self.nb_name, *self.members):
                sim.net.crash(name)
                sim.nb_live.pop(name, None)
            await sim.restarted[self.name].wait()

    def crash(self) -> None:
        self.sim.crashes += 1
        self.crashed.set()

    # --- the workload ----------------------------------------------------------------------

    async def chassis_agent(self) -> None:
        name = self.name
        r = self.replica
        assert r is not None
        existing = [u for u, row in r.iter_rows("Chassis")
                    if row[r.schema.tables["Chassis"].columns["name"].index] == (name,)]
        if existing:
            self.chassis = existing[0]
        else:
            res = self.transact([
                {"op": "insert", "table": "Encap", "uuid-name": "e",
                 "row": {"type": "geneve", "ip": f"10.0.{self.i // 250}.{self.i % 250}",
                         "chassis_name": name}},
                {"op": "insert", "table": "Chassis", "uuid-name": "c",
                 "row": {"name": name, "hostname": name, "encaps": ["named-uuid", "e"]}},
                {"op": "insert", "table": "Chassis_Private",
                 "row": {"name": name, "chassis": ["named-uuid", "c"]}}])
            if res and "uuid" in res[1]:
                self.chassis = res[1]["uuid"][1]
        pb = r.schema.tables["Port_Binding"].columns
        while self.sim.workload_on:
            await trio.sleep(self.rng.uniform(*self.sim.config.chassis_period_s))
            if not self.sim.workload_on:
                return
            # Claim the ports requested for this chassis.
            for u, row in list(r.iter_rows("Port_Binding")):
                opts = dict(row[pb["options"].index])
                if opts.get("requested-chassis") == name and not row[pb["chassis"].index] \
                        and self.chassis:
                    self.transact([{"op": "update", "table": "Port_Binding",
                                    "where": [["_uuid", "==", ["uuid", u]]],
                                    "row": {"chassis": ["uuid", self.chassis], "up": True}}])
            # Report the nb_cfg it has seen.
            cfg = [row[r.schema.tables["SB_Global"].columns["nb_cfg"].index][0]
                   for _, row in r.iter_rows("SB_Global")]
            if cfg:
                self.transact([{"op": "update", "table": "Chassis_Private",
                                "where": [["name", "==", name]], "row": {"nb_cfg": cfg[0]}}])
            # Learn a MAC binding now and then (two chassis may learn the same one).
            if self.rng.random() < 0.3:
                dps = sorted(u for u, _ in r.iter_rows("Datapath_Binding"))
                if dps:
                    k = self.rng.randrange(8)
                    self.transact([{"op": "insert", "table": "MAC_Binding", "row": {
                        "logical_port": f"lrp{k % 3}", "ip": f"192.168.0.{k}",
                        "mac": f"00:00:00:00:{self.i % 256:02x}:{k:02x}",
                        "datapath": ["uuid", self.rng.choice(dps)]}}])

    async def northd(self) -> None:
        sim = self.sim
        res = self.transact([{"op": "insert", "table": "SB_Global", "row": {"nb_cfg": 0}}])
        nb_cfg = 0
        dps = []
        for d in range(sim.config.datapaths):
            res = self.transact([{"op": "insert", "table": "Datapath_Binding",
                                  "row": {"tunnel_key": d + 1}}])
            if res and "uuid" in res[0]:
                dps.append(res[0]["uuid"][1])
        port = 0
        while sim.workload_on:
            await trio.sleep(self.rng.uniform(0.2, 0.6))
            if not sim.workload_on or not dps:
                return
            what = self.rng.random()
            if what < 0.4:
                port += 1
                chassis = f"hv{self.rng.randrange(sim.config.nodes)}"
                self.transact([{"op": "insert", "table": "Port_Binding", "row": {
                    "logical_port": f"lp{port}", "tunnel_key": port,
                    "datapath": ["uuid", self.rng.choice(dps)],
                    "options": ["map", [["requested-chassis", chassis]]]}}])
            elif what < 0.8:
                dp = self.rng.choice(dps)
                self.transact([{"op": "insert", "table": "Logical_Flow", "row": {
                    "logical_datapath": ["uuid", dp], "pipeline": "ingress",
                    "table_id": self.rng.randrange(30), "priority": self.rng.randrange(100),
                    "match": f"inport == \"lp{self.rng.randrange(port + 1)}\"",
                    "actions": "next;"}}])
                if self.rng.random() < 0.3:
                    self.transact([{"op": "delete", "table": "Logical_Flow",
                                    "where": [["priority", "==", self.rng.randrange(100)]]}])
            else:
                # Copy the Northbound's nb_cfg (as this node's cache has it) to the SB.
                nb = self.nb_values()
                if nb is not None and nb["nb_cfg"] != nb_cfg:
                    nb_cfg = nb["nb_cfg"]
                    self.transact([{"op": "update", "table": "SB_Global", "where": [],
                                    "row": {"nb_cfg": nb_cfg}}])

    # --- the Northbound: committed through the consensus plugin ----------------------------

    async def nb_transact(self, ops: list[Any]) -> tuple[str, list[Any] | None]:
        """Run a transaction as the server core does for a linearizable database: execute
        it on the cache, commit it through the plugin, run it again on Retry; one in flight
        per node. ("ok", results) once committed (or, for a read, linearized); ("unknown",
        None) when the plugin cannot tell; ("refused", ...) when it certainly had no effect.
        """
        assert self.nb is not None
        db = self.nb.db
        self.sim.nb_inflight += 1
        try:
            async with self.nb_lock:
                for _ in range(NB_MAX_RETRIES):
                    outcome = db.execute(ops)
                    if outcome.results is None:  # a wait that would block: not used here
                        return "refused", None
                    result = await db.commit(CommitRequest(
                        NB, ops, outcome.changeset or None, outcome.read_set, db.revision))
                    if isinstance(result, Applied):
                        return "ok", outcome.results
                    if isinstance(result, Failed):
                        if result.error.get("error") == UNKNOWN_OUTCOME:
                            return "unknown", None
                        return "refused", [*outcome.results, result.error]
                    self.sim.nb_retries += 1
                return "refused", None
        finally:
            self.sim.nb_inflight -= 1

    def nb_values(self) -> dict[str, int] | None:
        """The registers as this node's cache has them (None before the setup)."""
        if self.nb is None:
            return None
        db = self.nb.db
        tables = db.schema.tables
        out: dict[str, int] = {}
        for _, row in db.iter_rows("NB_Global"):
            out["nb_cfg"] = row[tables["NB_Global"].columns["nb_cfg"].index][0]
        ls = tables["Logical_Switch"].columns
        for _, row in db.iter_rows("Logical_Switch"):
            name = row[ls["name"].index][0]
            if name in NB_SWITCHES:
                out[name] = int(dict(row[ls["external_ids"].index]).get("v", "0"))
        return out if len(out) == len(NB_KEYS) else None

    def _nb_setup_ops(self) -> list[Any]:
        assert self.nb is not None
        db = self.nb.db
        ops: list[Any] = []
        if db.row_count("NB_Global") == 0:
            ops += [{"op": "wait", "table": "NB_Global", "where": [], "columns": ["nb_cfg"],
                     "until": "==", "rows": [], "timeout": 0},
                    {"op": "insert", "table": "NB_Global", "row": {}}]
        name_i = db.schema.tables["Logical_Switch"].columns["name"].index
        have = {row[name_i][0] for _, row in db.iter_rows("Logical_Switch")}
        for name in NB_SWITCHES:
            if name not in have:
                ops += [{"op": "wait", "table": "Logical_Switch",
                         "where": [["name", "==", name]], "columns": ["name"],
                         "until": "==", "rows": [], "timeout": 0},
                        {"op": "insert", "table": "Logical_Switch", "row": {"name": name}}]
        return ops

    async def nb_agent(self) -> None:
        """A CMS-like client: creates the rows if its node does not see them yet (guarded
        by waits, so only one node's attempt takes effect; the registers start at 0), then
        reads, writes and compare-and-sets them through this node, every call recorded."""
        sim = self.sim
        rng = random.Random(self.rng.random())
        while sim.workload_on and self._nb_setup_ops():
            await self.nb_transact(self._nb_setup_ops())
            if self._nb_setup_ops():
                await trio.sleep(rng.uniform(0.1, 0.3))
        ls = {"table": "Logical_Switch", "columns": ["external_ids"]}
        while sim.workload_on:
            await trio.sleep(rng.uniform(0.2, 0.6))
            values = self.nb_values()
            if not sim.workload_on or values is None:
                continue
            key = rng.choice(NB_KEYS)
            what = rng.random()
            if key == "nb_cfg":
                g = {"table": "NB_Global", "where": [], "columns": ["nb_cfg"]}
                if what < 0.5:
                    await self._nb_call(key, ("read",), [{"op": "select", **g}])
                else:
                    now = values[key]
                    await self._nb_call(key, ("cas", now, now + 1), [
                        {"op": "wait", **g, "until": "==", "rows": [{"nb_cfg": now}],
                         "timeout": 0},
                        {"op": "update", "table": "NB_Global", "where": [],
                         "row": {"nb_cfg": now + 1}}])
                continue
            where = [["name", "==", key]]
            if what < 0.4:
                await self._nb_call(key, ("read",), [{"op": "select", **ls, "where": where}])
            elif what < 0.75:
                new = next(sim.nb_fresh)
                await self._nb_call(key, ("write", new), [
                    {"op": "update", "table": "Logical_Switch", "where": where,
                     "row": {"external_ids": _ext(new)}}])
            else:
                now, new = values[key], next(sim.nb_fresh)
                await self._nb_call(key, ("cas", now, new), [
                    {"op": "wait", **ls, "where": where, "until": "==",
                     "rows": [{"external_ids": _ext(now)}], "timeout": 0},
                    {"op": "update", "table": "Logical_Switch", "where": where,
                     "row": {"external_ids": _ext(new)}}])

    async def _nb_call(self, key: str, call: tuple[Any, ...], ops: list[Any]) -> None:
        """One register operation: invoked, run, its response (or unknown fate) recorded.
        A node that crashes meanwhile never returns: the call stays open (unknown)."""
        sim = self.sim
        h = sim.history.invoke(self.i, call, key)
        t0 = trio.current_time()
        status, results = await self.nb_transact(ops)
        if status == "unknown":
            sim.history.info(h)
            return
        errors = [i for i, r in enumerate(results or []) if isinstance(r, dict) and "error" in r]
        if status != "ok" or results is None:
            sim.history.fail(h)
            return
        if call[0] == "read":
            rows = results[0]["rows"]
            if key == "nb_cfg":
                output = rows[0]["nb_cfg"] if rows else 0
            else:
                output = int(dict(rows[0]["external_ids"][1]).get("v", "0")) if rows else 0
        elif call[0] == "write":
            if errors or results[0].get("count") != 1:
                sim.history.fail(h)
                return
            output = None
        else:  # cas: the wait failed (False) or the update went through (True)
            if (errors and errors[0] != 0) or (not errors and results[1].get("count") != 1):
                sim.history.fail(h)
                return
            output = not errors
        sim.history.ok(h, output)
        sim.nb_latency.append(trio.current_time() - t0)


def _ext(value: int) -> list[Any]:
    """A register's value in Logical_Switch external_ids (0: no key)."""
    return ["map", [["v", str(value)]] if value else []]


class Simulation:
    def __init__(self, config: SimConfig, clock: trio.testing.MockClock):
        self.config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        self.profile = config.profile or self.rng.choice(PROFILES)
        self.schema = DatabaseSchema.from_file(config.schema_path).stored()
        self.nb_schema = DatabaseSchema.from_file(config.nb_schema_path).stored()
        self.nb_members = [f"nbm{i}" for i in range(config.nb_members)]
        self.host = {m: f"hv{i % config.nodes}" for i, m in enumerate(self.nb_members)}
        self.host.update({f"hv{i}:nb": f"hv{i}" for i in range(config.nodes)})
        self.nb_disks = {m: MemberDisk() for m in self.nb_members}
        self.nb_live: dict[str, Member] = {}
        self.nb_timing = Timing()
        self.nb_stats = Stats()
        self.history = HistoryRecorder(clock=trio.current_time)
        self.nb_fresh = itertools.count(1)  # register values: each one written once
        self.nb_latency: list[float] = []
        self.nb_inflight = 0
        self.nb_retries = 0
        self.net = MemoryNetwork(rng=random.Random(self.rng.random()),
                                 faults=_HostFaults(latency_s=(0.001, 0.01), host=self.host))
        self.trace = hashlib.sha256()
        self.net.on_deliver = self._traced
        self.nodes = [_Node(self, i) for i in range(config.nodes)]
        self.restarted = {n.name: trio.Event() for n in self.nodes}
        self.workload_on = True
        self.commits = 0
        self.crashes = 0
        #: (epoch, client, clock after) of local updates
        self.acked: list[tuple[EpochId, int, int]] = []
        #: every epoch's origin seen on any node (the lineage the lost-write check follows)
        self.origins: dict[EpochId, EpochOrigin] = {}
        #: (epoch, writer) -> its clock there up to which it made its writes again in a
        #: newer epoch after moving (Replica.recommits): those acks are checked there
        self.recommitted: dict[tuple[EpochId, int], int] = {}
        self.inserted: dict[str, float] = {}  # row uuid -> commit time
        #: propagation is measured for rows inserted from then on (after the warm-up)
        self.t_measure = float("inf")
        self.seen: dict[str, dict[str, float]] = {}  # row uuid -> node -> first time
        self.divergence: list[list[float]] = []
        self.divergence_interval = DIVERGENCE_INTERVAL_S
        self.phase = "warm-up"
        self.wall0 = time.perf_counter()
        self.phase_starts: dict[str, list[float]] = {}
        for n in self.nodes:
            self.net.endpoint(n.name)
            self.net.endpoint(n.nb_name)
        for m in self.nb_members:
            self.net.endpoint(m)

    def _traced(self, now: float, src: str, dst: str, frame: bytes) -> None:
        self.trace.update(f"{now:.6f} {src} {dst} ".encode())
        self.trace.update(hashlib.sha256(frame).digest())

    def _recorder(self, node: str, replica: Replica) -> Callable[[Any], None]:
        def on_change(ev: Any) -> None:
            now = trio.current_time()
            if ev.update is not None:
                sealed = open_sealed(ev.update)
                span = single_writer_span(sealed.update)
                if span is not None:
                    client, start, n = span
                    self.acked.append((EpochId(sealed.epoch, sealed.base), client, start + n))
            self._note_origin(replica)  # (the one that changed: every event, so not all)
            for rows in ev.changes.tables.values():
                for u, ch in rows.items():
                    if ch.new is None:
                        continue
                    if ev.local and ch.old is None:
                        self.inserted.setdefault(u, now)
                    self.seen.setdefault(u, {}).setdefault(node, now)
        return on_change

    # --- faults ----------------------------------------------------------------------------

    async def faults(self) -> None:
        f = self.net.faults
        names = [n.name for n in self.nodes]
        rng = random.Random(self.rng.random())
        profile = self.profile
        end = trio.current_time() + self.config.fault_s
        kinds = [profile] if profile != "mixed" else rng.sample(PROFILES[1:-1], 3)
        if "loss" in kinds:
            f.loss, f.duplicate = rng.uniform(0.05, 0.4), rng.uniform(0, 0.2)
        if "halves" in kinds:
            f.groups = [set(names[: len(names) // 2]), set(names[len(names) // 2:])]
        if "minority" in kinds:
            f.groups = [{names[-1]}, set(names[:-1])]
        if "one-way" in kinds:
            f.one_way = {(names[0], x) for x in names[1:]}
        while trio.current_time() < end:
            await trio.sleep(rng.uniform(0.5, 2.0))
            if "flapping" in kinds:
                f.groups = None if f.groups else [set(rng.sample(names, len(names) // 2)),
                                                  set()]
                if f.groups:
                    f.groups[1] = set(names) - f.groups[0]
            if "delay" in kinds:
                f.latency_s = (0.001, 0.3) if f.latency_s[1] < 0.1 else (0.001, 0.01)
            if "crash" in kinds and rng.random() < 0.3:
                victim = rng.choice(self.nodes[1:] or self.nodes)
                if victim.up:
                    victim.crash()
                    self.restarted[victim.name] = trio.Event()
                    await trio.sleep(rng.uniform(0.5, 3.0))
                    self.restarted[victim.name].set()
            if "clock-jump" in kinds and rng.random() < 0.2:
                # Every clock leaps forward at once (a VM paused, then resumed): every
                # timer is late, peers look silent past their timeout and get dropped.
                self.clock.jump(rng.uniform(5, 20))
        # Heal: no faults, every node up, no more writes.
        f.loss = f.duplicate = 0.0
        f.groups, f.one_way, f.latency_s = None, set(), (0.001, 0.01)
        for ev in self.restarted.values():
            ev.set()

    # --- the run -----------------------------------------------------------------------------

    async def main(self, progress: Callable[[float, float], None] | None = None) -> SimResult:
        self.wall0 = time.perf_counter()
        self._enter("warm-up")
        with trio.CancelScope() as scope:
            result = await self._run(scope, progress)
            result.wall_s = time.perf_counter() - self.wall0
            return result
        return self._stopped()

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_starts[phase] = [round(trio.current_time(), 3),
                                    round(time.perf_counter() - self.wall0, 3)]

    async def _watchdog(self, limit_s: float, scope: trio.CancelScope) -> None:
        """Stop the run once it has taken ``limit_s`` wall seconds (SimConfig.wall_limit_s)."""
        while time.perf_counter() - self.wall0 < limit_s:
            await trio.sleep(0.01)
        scope.cancel()

    def _stopped(self) -> SimResult:
        """The result of a run stopped by its wall-time limit: how far it got, unchecked."""
        cfg = self.config
        now = trio.current_time()
        return SimResult(
            seed=cfg.seed, nodes=cfg.nodes, profile=self.profile,
            trace_hash=self.trace.hexdigest()[:16], converged=False, convergence_s=None,
            invariant_violations=[], lost_writes=0, acknowledged_writes=len(self.acked),
            conflicts={}, propagation_ms=_percentiles([]),
            bytes_per_node=(self.net.bytes_sent - self.nb_stats.bytes) / cfg.nodes,
            frames=self.net.frames_sent - self.nb_stats.frames, crashes=self.crashes,
            simulated_s=now, divergence=self.divergence, completed=False,
            stopped_in=self.phase, phase_starts=self.phase_starts,
            wall_s=time.perf_counter() - self.wall0,
            failures=[f"stopped by the wall-time limit ({cfg.wall_limit_s} s) in the "
                      f"{self.phase} phase, at {now:.3f} simulated s: nothing checked"])

    # --- divergence: how many nodes see something else than most do -------------------------

    def _divergent_nodes(self) -> int:
        """Nodes whose Southbound document differs from the most common one, a node that
        is down counting as differing. Documents are compared by state vector (which
        updates they hold: equal vectors, equal documents, hence equal views), which costs
        one encode and decode per node instead of a comparison of every row."""
        docs: Counter[tuple[EpochId, frozenset[tuple[int, int]]]] = Counter()
        for n in self.nodes:
            if n.up and n.replica is not None:
                docs[n.replica.epoch_id,
                     frozenset(decode_state_vector(n.replica.state_vector()).items())] += 1
        return len(self.nodes) - max(docs.values(), default=0)

    def _divergence_point(self, t0: float) -> None:
        t = round(trio.current_time() - t0, 3)
        point = [t, float(self._divergent_nodes())]
        if self.divergence and self.divergence[-1][0] == t:
            self.divergence[-1] = point
        else:
            self.divergence.append(point)

    async def _sample_divergence(self, t0: float) -> None:
        """A point every ``divergence_interval`` simulated seconds from ``t0``, the series
        thinned (every other point, the interval doubled) when it reaches its bound."""
        while True:
            if len(self.divergence) >= DIVERGENCE_MAX_POINTS:
                self.divergence = self.divergence[::2]
                self.divergence_interval *= 2
            self._divergence_point(t0)
            self._note_origins()
            await trio.sleep(self.divergence_interval)

    async def _run(self, scope: trio.CancelScope,
                   progress: Callable[[float, float], None] | None) -> SimResult:
        cfg = self.config
        names = [n.name for n in self.nodes]
        failures: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.net.run)
            if cfg.wall_limit_s is not None:
                nursery.start_soon(self._watchdog, cfg.wall_limit_s, scope)
            for n in self.nodes:
                self.restarted[n.name].set()
                nursery.start_soon(n.run)
            topo = random.Random(self.rng.random())
            for a in names:
                for b in topo.sample([x for x in names if x != a], min(cfg.degree,
                                                                        len(names) - 1)):
                    self.net.connect(a, b)
            for a, b in itertools.combinations(self.nb_members, 2):
                self.net.connect(a, b)
            for n in self.nodes:
                for m in self.nb_members:
                    self.net.connect(n.nb_name, m)
            await trio.sleep(1.0)
            # The Northbound's rows exist (the registers of the history), and every node's
            # cache shows them, before the faults (a few more seconds at most).
            t_ready = trio.current_time() + 5.0
            while trio.current_time() < t_ready and not all(
                    n.nb_values() is not None for n in self.nodes):
                await trio.sleep(0.1)
            t_fault = self.t_measure = trio.current_time()
            self._enter("fault")
            nursery.start_soon(self._sample_divergence, t_fault)
            async with trio.open_nursery() as phase:
                phase.start_soon(self.faults)
                while trio.current_time() - t_fault < cfg.fault_s:
                    await trio.sleep(1.0)
                    if progress:
                        progress(trio.current_time() - t_fault, cfg.fault_s + cfg.heal_limit_s)
            self.workload_on = False
            t_heal = trio.current_time()
            self._enter("healed")
            converged_at = nb_settled_at = None
            while trio.current_time() - t_heal < cfg.heal_limit_s:
                await trio.sleep(0.5)
                if progress:
                    progress(cfg.fault_s + trio.current_time() - t_heal,
                             cfg.fault_s + cfg.heal_limit_s)
                if converged_at is None and all(n.up for n in self.nodes) and \
                        self._converged():
                    converged_at = trio.current_time() - t_heal
                if nb_settled_at is None and self._nb_settled():
                    nb_settled_at = trio.current_time() - t_heal
                if converged_at is not None and nb_settled_at is not None:
                    break
            self._divergence_point(t_fault)
            self._enter("check")
            replicas = [n.replica for n in self.nodes if n.replica is not None]
            violations = self._check_views(replicas)
            lost = self._lost_writes(replicas)
            nb_states = [n.nb.state() for n in self.nodes if n.nb is not None]
            simulated = trio.current_time()
            nursery.cancel_scope.cancel()
        if converged_at is None:
            failures.append(f"no convergence within {cfg.heal_limit_s} s after the heal")
        nb_violations = list(self.nb_stats.violations)
        if nb_settled_at is None:
            failures.append(f"the Northbound did not settle within {cfg.heal_limit_s} s "
                            "after the heal (no leader, or some node's cache behind)")
        elif any(s != nb_states[0] for s in nb_states):
            nb_violations.append("nodes' Northbound caches differ after the heal")
        if nb_violations:
            failures.append(f"{len(nb_violations)} Northbound violations, e.g. "
                            f"{nb_violations[0]}")
        history = self.history.history()
        verdict = check(history, KeyValueModel(0), timeout_s=cfg.check_timeout_s)
        report = None
        if verdict.ok is False:
            report = verdict.explain()
            lines = report.splitlines()
            failures.append("the Northbound history is not linearizable: " + lines[0] + "\n"
                            + "\n".join(lines[-8:]) + "\n(nb_check_report has all of it)")
        if violations:
            failures.append(f"{len(violations)} invariant violations, e.g. {violations[0]}")
        if lost:
            failures.append(f"{lost} acknowledged writes missing on some node")
        for r in replicas:
            self.trace.update(repr(sorted((t, sorted(rows.items()))
                                          for t, rows in r.view.raw.items())).encode())
        for s in nb_states:
            self.trace.update(repr(s).encode())
        reach = sorted(max(self.seen[u].values()) - t for u, t in self.inserted.items()
                       if t >= self.t_measure and len(self.seen.get(u, {})) == len(self.nodes))
        samples = reach
        if len(reach) > MAX_PROPAGATION_SAMPLES:
            samples = sorted(random.Random(self.rng.random()).sample(reach,
                                                                     MAX_PROPAGATION_SAMPLES))
        first = replicas[0] if replicas else None
        return SimResult(
            seed=cfg.seed, nodes=cfg.nodes, profile=self.profile,
            trace_hash=self.trace.hexdigest()[:16], converged=converged_at is not None,
            convergence_s=None if converged_at is None else round(converged_at, 3),
            invariant_violations=violations, lost_writes=lost,
            acknowledged_writes=len(self.acked),
            conflicts=dict(first.conflicts.counts()) if first else {},
            propagation_ms=_percentiles(reach, with_max=True),
            propagation_samples_ms=[round(x * 1000, 3) for x in samples],
            divergence=self.divergence, heal_at_s=round(t_heal - t_fault, 3),
            phase_starts=self.phase_starts,
            bytes_per_node=(self.net.bytes_sent - self.nb_stats.bytes) / cfg.nodes,
            frames=self.net.frames_sent - self.nb_stats.frames,
            crashes=self.crashes, simulated_s=simulated,
            linearizable=verdict.ok, nb_ops=len(history),
            nb_unknown_ops=sum(1 for op in history if op.unknown),
            nb_commit_ms=_percentiles(sorted(self.nb_latency)),
            nb_settled=nb_settled_at is not None, nb_elections=self.nb_stats.elections,
            nb_retries=self.nb_retries, nb_bytes_per_node=self.nb_stats.bytes / cfg.nodes,
            nb_violations=nb_violations, nb_check_report=report, failures=failures,
            epochs=max((r.epoch for r in replicas), default=0),
            recommits=len(self.recommitted))

    def _nb_settled(self) -> bool:
        """Every member up, a leader with its whole log committed, no Northbound transaction
        in flight, and every node's cache at that revision."""
        if self.nb_inflight or len(self.nb_live) < len(self.nb_members):
            return False
        leaders = [m for m in self.nb_live.values() if m.role == LEADER]
        if not leaders:
            return False
        top = max(leaders, key=lambda m: m.disk.term)
        if top.commit_index != len(top.disk.log):
            return False
        return all(n.up and n.nb is not None and n.nb.db.revision == top.commit_index
                   for n in self.nodes)

    def _converged(self) -> bool:
        first, *rest = [n.replica for n in self.nodes]
        return first is not None and all(r is not None and r.view.raw == first.view.raw
                                         for r in rest)

    def _check_views(self, replicas: list[Replica]) -> list[str]:
        out: list[str] = []
        for r in replicas:
            out += [f"{r.name}@{r.client_id}: {p}" for p in integrity.violations(r.view.rows)]
            hidden = set(r.view.hidden())
            accounted = {(c.table, c.uuid) for c in r.conflicts.active() if c.kind in ROW_KINDS}
            if hidden != accounted:
                out.append(f"client {r.client_id}: hidden rows {len(hidden)} but "
                           f"{len(accounted)} row conflicts reported")
        if replicas and any(r.view.hidden() != replicas[0].view.hidden() for r in replicas):
            out.append("replicas hide different rows")
        return out

    def _note_origins(self) -> None:
        for n in self.nodes:
            if n.replica is not None:
                self._note_origin(n.replica)

    def _note_origin(self, r: Replica) -> None:
        if r.origin is not None:
            self.origins.setdefault(r.epoch_id, r.origin)
        for left, own, _ in r.recommits:
            key = (left, r.client_id)
            self.recommitted[key] = max(own, self.recommitted.get(key, 0))

    def _lost_writes(self, replicas: list[Replica]) -> int:
        """Acknowledged writes missing from a replica: by its state vector for writes of its
        own epoch; for an older epoch's, by the cut where its lineage left that epoch."""
        self._note_origins()
        lost = 0
        for r in replicas:
            clocks = decode_state_vector(r.doc.get_state())
            for epoch, client, clock in self.acked:
                if epoch == r.epoch_id:
                    lost += clocks.get(client, 0) < clock
                    continue
                if self.recommitted.get((epoch, client), 0) >= clock:
                    continue  # made again in a newer epoch: that commit's ack is checked
                e, child = r.epoch_id, None
                while e != epoch and e in self.origins:
                    e, child = self.origins[e].previous, e
                lost += e != epoch or child is None or \
                    self.origins[child].cut.get(client, 0) < clock
        return lost


def _percentiles(sorted_s: list[float], with_max: bool = False) -> dict[str, float | None]:
    """p50/p90/p99 (and the maximum) in milliseconds of sorted durations in seconds."""
    n = len(sorted_s)
    out = {q: (round(sorted_s[min(n - 1, int(p * n))] * 1000, 3) if n else None)
           for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
    if with_max:
        out["max"] = round(sorted_s[-1] * 1000, 3) if n else None
    return out


def run(config: SimConfig, progress: Callable[[float, float], None] | None = None
        ) -> SimResult:
    for path in (config.schema_path, config.nb_schema_path):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: install ovn-common")
    pin_determinism(config.seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    sim = Simulation(config, clock)
    return trio.run(sim.main, progress, clock=clock)
