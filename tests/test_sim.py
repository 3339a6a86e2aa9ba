"""The simulator: deterministic, passes a swarm of seeds, and catches planted bugs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sims.cloud import SimConfig, run

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
                "propagation_ms", "bytes_per_node"):
        assert key in a
    assert a["converged"] and a["invariant_violations"] == [] and a["lost_writes"] == 0


def _swarm(seeds: range, nodes: tuple[int, int], fault_s: float) -> list[Any]:
    results = []
    for seed in seeds:
        n = nodes[0] + seed % (nodes[1] - nodes[0] + 1)
        r = run(SimConfig(seed=seed, nodes=n, fault_s=fault_s, heal_limit_s=30))
        assert r.ok, f"reproduce with seed={seed} (nodes={n}): {r.failures}"
        results.append(r)
    return results


def test_short_swarm() -> None:
    results = _swarm(range(100, 120), (3, 5), 5.0)
    assert {r.profile for r in results} >= {"crash", "loss"} or len(
        {r.profile for r in results}) >= 5
    assert sum(r.acknowledged_writes for r in results) > 200


@pytest.mark.slow
def test_long_swarm() -> None:
    _swarm(range(1000, 1200), (3, 10), 15.0)


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
