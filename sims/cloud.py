"""Seeded, deterministic simulations of an OVN cloud's Southbound on crdtdb nodes.

N real nodes (engine, replica, gossip, the node loop) on the memory transport under trio's
MockClock, each with a simulated disk. Node 0 plays ovn-northd (datapaths, port bindings,
logical flows, nb_cfg); every node plays a chassis (registers Chassis/Encap/Chassis_Private,
claims the ports requested for it, reports nb_cfg, learns MAC bindings). A seeded fault phase
(partitions, loss, delay spikes, crashes with restarts, clock jumps) is followed by a healed
phase that must converge. Then the checks: all views identical and valid, no acknowledged
write lost, every hidden row accounted for as a conflict.

One seed fully determines a run: same seed, same trace hash (run with PYTHONHASHSEED=0, as
``crdtdb sim`` does). Every failure says "reproduce with seed=N".

The Northbound's linearizable path is not simulated yet (the consensus issue).
"""

from __future__ import annotations

import hashlib
import random
import uuid as uuidlib
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from crdtdb.engine import DatabaseSchema, integrity
from crdtdb.node import open_node
from crdtdb.replica import Replica
from crdtdb.replica.conflicts import ROW_KINDS
from crdtdb.replica.envelope import decode_state_vector, open_sealed, single_writer_span
from sims.simdisk import SimLog
from transport.memory import LinkFaults, MemoryNetwork

SB = "OVN_Southbound"
PROFILES = ("none", "halves", "minority", "one-way", "flapping", "loss", "delay", "crash",
            "clock-jump", "mixed")


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
    schema_path: str = "/usr/share/ovn/ovn-sb.ovsschema"


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


class _Node:
    def __init__(self, sim: Simulation, i: int):
        self.sim = sim
        self.i = i
        self.name = f"hv{i}"
        self.rng = random.Random(sim.rng.random())
        self.disk = SimLog(self.name)
        self.replica: Replica | None = None
        self.crashed = trio.Event()
        self.up = False
        self.chassis: str | None = None

    def new_uuid(self) -> str:
        return str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))

    def open_replica(self) -> Replica:
        self.disk.reopen()
        r = Replica.open_log(self.disk, self.sim.schema, fsync=True,
                             rng=random.Random(self.rng.random()), new_uuid=self.new_uuid)
        r.add_listener(self.sim._recorder(self.name))
        self.replica = r
        return r

    def transact(self, ops: list[Any]) -> list[Any] | None:
        if not self.up or self.replica is None:
            return None
        results = self.replica.transact(ops)
        self.sim.commits += 1
        return results

    async def run(self) -> None:
        """The node's life: up until crashed, down for a while, up again (replayed)."""
        while True:
            self.crashed = trio.Event()
            replica = self.open_replica()
            transport = self.sim.net.revive(self.name)
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(open_node(
                    {SB: replica}, node_id=self.name, transport=transport,
                    rng=random.Random(self.rng.random())))
                self.up = True
                async with trio.open_nursery() as n:
                    n.start_soon(self.chassis_agent)
                    if self.i == 0:
                        n.start_soon(self.northd)
                    await self.crashed.wait()
                    n.cancel_scope.cancel()
            self.up = False
            self.disk.crash()
            self.sim.net.crash(self.name)
            await self.sim.restarted[self.name].wait()

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
            await trio.sleep(self.rng.uniform(0.3, 1.0))
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
                nb_cfg += 1
                self.transact([{"op": "update", "table": "SB_Global", "where": [],
                                "row": {"nb_cfg": nb_cfg}}])


class Simulation:
    def __init__(self, config: SimConfig, clock: trio.testing.MockClock):
        self.config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        self.profile = config.profile or self.rng.choice(PROFILES)
        self.schema = DatabaseSchema.from_file(config.schema_path).stored()
        self.net = MemoryNetwork(rng=random.Random(self.rng.random()),
                                 faults=LinkFaults(latency_s=(0.001, 0.01)))
        self.trace = hashlib.sha256()
        self.net.on_deliver = self._traced
        self.nodes = [_Node(self, i) for i in range(config.nodes)]
        self.restarted = {n.name: trio.Event() for n in self.nodes}
        self.workload_on = True
        self.commits = 0
        self.crashes = 0
        self.acked: list[tuple[int, int]] = []  # (client, clock after) of local updates
        self.inserted: dict[str, float] = {}  # row uuid -> commit time
        #: propagation is measured for rows inserted from then on (after the warm-up)
        self.t_measure = float("inf")
        self.seen: dict[str, dict[str, float]] = {}  # row uuid -> node -> first time
        for n in self.nodes:
            self.net.endpoint(n.name)

    def _traced(self, now: float, src: str, dst: str, frame: bytes) -> None:
        self.trace.update(f"{now:.6f} {src} {dst} ".encode())
        self.trace.update(hashlib.sha256(frame).digest())

    def _recorder(self, node: str) -> Callable[[Any], None]:
        def on_change(ev: Any) -> None:
            now = trio.current_time()
            if ev.update is not None:
                span = single_writer_span(open_sealed(ev.update).update)
                if span is not None:
                    client, start, n = span
                    self.acked.append((client, start + n))
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
        cfg = self.config
        names = [n.name for n in self.nodes]
        failures: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.net.run)
            for n in self.nodes:
                self.restarted[n.name].set()
                nursery.start_soon(n.run)
            topo = random.Random(self.rng.random())
            for a in names:
                for b in topo.sample([x for x in names if x != a], min(cfg.degree,
                                                                        len(names) - 1)):
                    self.net.connect(a, b)
            await trio.sleep(1.0)
            t_fault = self.t_measure = trio.current_time()
            async with trio.open_nursery() as phase:
                phase.start_soon(self.faults)
                while trio.current_time() - t_fault < cfg.fault_s:
                    await trio.sleep(1.0)
                    if progress:
                        progress(trio.current_time() - t_fault, cfg.fault_s + cfg.heal_limit_s)
            self.workload_on = False
            t_heal = trio.current_time()
            converged_at = None
            while trio.current_time() - t_heal < cfg.heal_limit_s:
                await trio.sleep(0.5)
                if progress:
                    progress(cfg.fault_s + trio.current_time() - t_heal,
                             cfg.fault_s + cfg.heal_limit_s)
                if all(n.up for n in self.nodes) and self._converged():
                    converged_at = trio.current_time() - t_heal
                    break
            replicas = [n.replica for n in self.nodes if n.replica is not None]
            violations = self._check_views(replicas)
            lost = self._lost_writes(replicas)
            simulated = trio.current_time()
            nursery.cancel_scope.cancel()
        if converged_at is None:
            failures.append(f"no convergence within {cfg.heal_limit_s} s after the heal")
        if violations:
            failures.append(f"{len(violations)} invariant violations, e.g. {violations[0]}")
        if lost:
            failures.append(f"{lost} acknowledged writes missing on some node")
        for r in replicas:
            self.trace.update(repr(sorted((t, sorted(rows.items()))
                                          for t, rows in r.view.raw.items())).encode())
        reach = sorted(max(self.seen[u].values()) - t for u, t in self.inserted.items()
                       if t >= self.t_measure and len(self.seen.get(u, {})) == len(self.nodes))
        first = replicas[0] if replicas else None
        return SimResult(
            seed=cfg.seed, nodes=cfg.nodes, profile=self.profile,
            trace_hash=self.trace.hexdigest()[:16], converged=converged_at is not None,
            convergence_s=None if converged_at is None else round(converged_at, 3),
            invariant_violations=violations, lost_writes=lost,
            acknowledged_writes=len(self.acked),
            conflicts=dict(first.conflicts.counts()) if first else {},
            propagation_ms={q: (reach[min(len(reach) - 1, int(p * len(reach)))] * 1000
                                if reach else None)
                            for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
            bytes_per_node=self.net.bytes_sent / cfg.nodes, frames=self.net.frames_sent,
            crashes=self.crashes, simulated_s=simulated, failures=failures)

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

    def _lost_writes(self, replicas: list[Replica]) -> int:
        lost = 0
        for r in replicas:
            clocks = decode_state_vector(r.doc.get_state())
            lost += sum(1 for client, clock in self.acked if clocks.get(client, 0) < clock)
        return lost


def run(config: SimConfig, progress: Callable[[float, float], None] | None = None
        ) -> SimResult:
    if not Path(config.schema_path).exists():
        raise FileNotFoundError(f"{config.schema_path}: install ovn-common")
    pin_determinism(config.seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    sim = Simulation(config, clock)
    return trio.run(sim.main, progress, clock=clock)
