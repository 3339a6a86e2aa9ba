"""The simulator: deterministic, passes a swarm of seeds, and catches planted bugs (in the
gossip, in the view, and in the Northbound's consensus plugin)."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crdtdb.consensus.commit import Applied, CommitOutcome, CommitRequest, Failed
from sims import cloud, simconsensus
from sims.cloud import SimConfig, SimResult, run

ROOT = Path(__file__).resolve().parent.parent
SB = Path("/usr/share/ovn/ovn-sb.ovsschema")

pytestmark = pytest.mark.skipif(not SB.exists(), reason="ovn-common not installed")


@pytest.fixture(autouse=True)
def quiet() -> Any:
    logger = logging.getLogger("crdtdb")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _cli(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "sim.json"
    proc = subprocess.run([sys.executable, "-m", "crdtdb.cli", "sim", *args, f"--json={out}"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_same_seed_same_trace(tmp_path: Path) -> None:
    a = _cli(tmp_path, "--seed=11", "--nodes=4", "--fault-s=6", "--profile=mixed")
    b = _cli(tmp_path, "--seed=11", "--nodes=4", "--fault-s=6", "--profile=mixed")
    c = _cli(tmp_path, "--seed=12", "--nodes=4", "--fault-s=6", "--profile=mixed")
    assert a["trace_hash"] == b["trace_hash"] != c["trace_hash"]
    for key in ("trace_hash", "converged", "invariant_violations", "lost_writes",
                "propagation_ms", "bytes_per_node", "linearizable", "nb_ops", "nb_commit_ms"):
        assert key in a
    assert a["converged"] and a["invariant_violations"] == [] and a["lost_writes"] == 0
    assert a["linearizable"] is True and a["nb_ops"] > 0 and a["nb_settled"]
    assert a["nb_commit_ms"]["p50"] is not None


def test_the_chassis_period_sets_the_write_rate(tmp_path: Path) -> None:
    """``--chassis-period-s`` (what makes N = 1000 affordable) reaches the chassis agents:
    same seed, longer pauses, fewer Southbound writes, and the run still checks out."""
    busy = _cli(tmp_path, "--seed=5", "--nodes=4", "--fault-s=6", "--profile=none")
    calm = _cli(tmp_path, "--seed=5", "--nodes=4", "--fault-s=6", "--profile=none",
                "--chassis-period-s", "3", "10")
    assert calm["acknowledged_writes"] < busy["acknowledged_writes"]
    assert calm["converged"] and calm["lost_writes"] == 0 and calm["linearizable"] is True


def test_result_has_propagation_samples_and_divergence_series() -> None:
    """The report's raw material: the propagation times themselves, and how many nodes
    differ from the most common Southbound over time (a partition into halves shows about
    half of them; after the heal, none)."""
    r = run(SimConfig(seed=3, nodes=6, fault_s=4, profile="halves", heal_limit_s=20))
    assert r.ok, r.failures
    d = json.loads(json.dumps(r.to_json()))
    samples = d["propagation_samples_ms"]
    assert samples and samples == sorted(samples)
    assert len(samples) <= cloud.MAX_PROPAGATION_SAMPLES
    assert d["propagation_ms"]["p50"] in samples and d["propagation_ms"]["max"] == samples[-1]
    series = d["divergence"]
    assert 0 < len(series) <= cloud.DIVERGENCE_MAX_POINTS + 1
    assert all(len(p) == 2 and 0 <= p[1] <= 6 for p in series)
    ts = [t for t, _ in series]
    assert ts == sorted(ts) and ts[0] == 0.0
    heal = d["heal_at_s"]
    assert heal is not None and heal >= 4
    assert max(v for t, v in series if 0.5 <= t < heal) >= 3  # one half at least
    assert series[-1][1] == 0  # converged: every node on the same document


def test_result_series_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloud, "MAX_PROPAGATION_SAMPLES", 5)
    monkeypatch.setattr(cloud, "DIVERGENCE_MAX_POINTS", 8)
    r = run(SimConfig(seed=4, nodes=5, fault_s=5, profile="halves", heal_limit_s=20))
    assert r.ok, r.failures
    assert len(r.propagation_samples_ms) == 5
    assert r.propagation_samples_ms == sorted(r.propagation_samples_ms)
    assert len(r.divergence) <= 9
    assert r.divergence[-1][1] == 0 and r.divergence[-1][0] > (r.heal_at_s or 0)
    # the last point is the one taken at the end; the others are evenly spaced
    steps = {round(b[0] - a[0], 3) for a, b in itertools.pairwise(r.divergence[:-1])}
    assert min(steps) >= 0.5  # thinned: the interval doubled at least once


def test_wall_limit_stops_a_run_unchecked() -> None:
    r = run(SimConfig(seed=5, nodes=4, fault_s=4, profile="none", wall_limit_s=0.0))
    assert not r.completed and not r.ok and r.stopped_in == "warm-up"
    assert "wall-time limit" in r.failures[0]


def _swarm(seeds: range, nodes: tuple[int, int], fault_s: float,
           compact_after_updates: int | None = None) -> list[SimResult]:
    results = []
    for seed in seeds:
        n = nodes[0] + seed % (nodes[1] - nodes[0] + 1)
        r = run(SimConfig(seed=seed, nodes=n, fault_s=fault_s, heal_limit_s=30,
                          compact_after_updates=compact_after_updates))
        flag = f" --compact-after-updates={compact_after_updates}" if compact_after_updates \
            else ""
        assert r.ok, f"reproduce with seed={seed} (nodes={n}{flag}): {r.failures}"
        assert r.linearizable is True, f"reproduce with seed={seed} (nodes={n}): undecided"
        results.append(r)
    return results


def test_short_swarm() -> None:
    results = _swarm(range(100, 150), (3, 5), 5.0)  # 50 seeds, as the issue suggests
    assert {r.profile for r in results} >= {"crash", "loss"} or len(
        {r.profile for r in results}) >= 5
    assert sum(r.acknowledged_writes for r in results) > 200
    # The Northbound did work, and the faults left some outcomes unknown.
    assert sum(r.nb_ops for r in results) > 400
    assert sum(r.nb_unknown_ops for r in results) > 0


@pytest.mark.slow
def test_long_swarm() -> None:
    _swarm(range(1000, 1200), (3, 10), 15.0)


def test_short_swarm_with_compaction_rounds() -> None:
    """Node 0 compacts every 12 changes while the faults (crashes, partitions, loss, clock
    jumps) go on: no write lost, every node ends in one epoch, views equal."""
    results = _swarm(range(400, 415), (4, 7), 6.0, compact_after_updates=12)
    assert sum(r.epochs for r in results) >= 30
    # Some node wrote past a cut: 1 to 7 of these 15 seeds do, depending on the process's
    # string hash seed (set orders; `crdtdb sim` pins PYTHONHASHSEED=0, pytest does not),
    # and a full test run once saw none. More seeds until one does, 30 at most.
    more = iter(range(415, 445))
    while sum(r.recommits for r in results) == 0 and (seed := next(more, None)) is not None:
        results += _swarm(range(seed, seed + 1), (4, 7), 6.0, compact_after_updates=12)
    assert sum(r.recommits for r in results) > 0


@pytest.mark.slow
def test_long_swarm_with_compaction_rounds() -> None:
    _swarm(range(2000, 2100), (3, 10), 12.0, compact_after_updates=10)


def test_swarm_finds_a_dropped_anti_entropy_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: anti-entropy never runs. Pushes lost in the fault phase are never
    repaired, and the swarm must notice."""
    from crdtdb.gossip import protocol

    real_tick = protocol.Gossip.tick

    def tick_without_anti_entropy(self: protocol.Gossip, now: float) -> list[Any]:
        self._next_anti_entropy = now + 1e9
        return real_tick(self, now)

    monkeypatch.setattr(protocol.Gossip, "tick", tick_without_anti_entropy)
    monkeypatch.setattr(protocol.Gossip, "_on_hello", _hello_without_catch_up())
    failed = [seed for seed in range(10)
              if not run(SimConfig(seed=seed, nodes=4, fault_s=6, heal_limit_s=10,
                                   profile="loss")).converged]
    assert failed, "the planted bug went unnoticed"


def _hello_without_catch_up() -> Any:
    from crdtdb.gossip import protocol

    real = protocol.Gossip._on_hello

    def on_hello(self: protocol.Gossip, p: Any, msg: Any) -> list[Any]:
        real(self, p, msg)
        return []  # no state-vector exchange on connect either
    return on_hello


def test_swarm_finds_a_broken_merge_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: the view forgets index uniqueness. Two chassis learning the same MAC
    binding then both show: the invariant check must catch it."""
    from crdtdb.replica import view

    monkeypatch.setattr(view.View, "_s1_reason", lambda self, key, winners: None)
    found = [seed for seed in range(10)
             if run(SimConfig(seed=seed, nodes=4, fault_s=8, profile="halves",
                              heal_limit_s=10)).invariant_violations]
    assert found, "the planted bug went unnoticed"


# --- planted bugs in the Northbound's consensus plugin --------------------------------------


def _first_caught(profiles: tuple[str, ...], seeds: range = range(12)) -> int | None:
    """The first seed whose run the linearizability checker rejects (a partition profile
    each, in turn), or None."""
    for seed in seeds:
        r = run(SimConfig(seed=seed, nodes=4 + seed % 2, fault_s=6, heal_limit_s=10,
                          profile=profiles[seed % len(profiles)]))
        if r.linearizable is False:
            assert not r.ok and any("not linearizable" in f for f in r.failures)
            return seed
    return None


def test_swarm_finds_commits_acknowledged_without_a_majority(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: the leader counts an entry committed as soon as it holds it. A leader
    cut off in a minority keeps acknowledging writes that the majority's new leader never
    sees (and later overwrites): the history checker must notice."""
    monkeypatch.setattr(simconsensus.Member, "commit_quorum", lambda self: 1)
    assert _first_caught(("halves", "flapping")) is not None, "the planted bug went unnoticed"


def test_swarm_finds_reads_without_a_barrier(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: reads (and failed compare-and-sets) are answered from the node's cache
    without a majority round. A node cut off from the members serves stale values while the
    others move on."""
    async def no_barrier(self: simconsensus.NbClient, request: CommitRequest
                         ) -> CommitOutcome:
        return Applied()

    monkeypatch.setattr(simconsensus.NbClient, "read_barrier", no_barrier)
    assert _first_caught(("minority", "halves")) is not None, "the planted bug went unnoticed"


def test_swarm_finds_reads_answered_from_before_their_barrier(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug, subtler: the barrier is there, but the read's result is the one computed
    on the cache before it (not run again when a table it read changed meanwhile). A node
    whose cache lagged while the others wrote answers with the old value."""
    async def barrier_only(self: simconsensus.NbClient, request: CommitRequest
                           ) -> CommitOutcome:
        got = await self._request({"k": "read"})
        return Applied() if got else Failed({"error": simconsensus.UNKNOWN_OUTCOME})

    monkeypatch.setattr(simconsensus.NbClient, "read_barrier", barrier_only)
    assert _first_caught(("minority", "halves", "flapping"), range(14)) is not None, \
        "the planted bug went unnoticed"
