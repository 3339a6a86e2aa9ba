"""The etcd v3 JSON-gateway client against a real etcd: KV, txn, leases, watch, failover.

One single-member etcd serves the module (every test works under its own key prefix); the
failover tests start a 3-member cluster of their own.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from crdtdb.consensus.etcd_client import (
    Compare,
    DeleteRange,
    EtcdCompacted,
    EtcdError,
    EtcdIndeterminate,
    EtcdLeaseExpired,
    EtcdProtocolError,
    EtcdRequestError,
    EtcdUnavailable,
    Put,
    Range,
    WatchEvent,
    open_etcd_client,
    prefix_end,
)
from crdtdb.testing.etcd_server import EtcdCluster, find_etcd
from crdtdb.testing.ports import free_tcp_ports

pytestmark = pytest.mark.etcd


def _require_etcd() -> None:
    if find_etcd() is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is missing; CI is set, so this test may not be skipped")
        pytest.skip("etcd is missing (Debian package etcd-server)")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    _require_etcd()
    with EtcdCluster(1, tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[EtcdCluster]:
    _require_etcd()
    with EtcdCluster(3, tmp_path / "etcd3") as cluster:
        cluster.wait_for_leader()
        yield cluster


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> bytes:
    """A key prefix no other test uses."""
    return f"/test/{request.node.name}/".encode()


def test_prefix_end() -> None:
    assert prefix_end(b"a/") == b"a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"a\xfe\xff\xff") == b"a\xff"
    assert prefix_end(b"\xff\xff") == b"\0"
    assert prefix_end(b"") == b"\0"


def test_compare_checks_its_operand() -> None:
    assert Compare.mod(b"k", "EQUAL", 3).to_json() == {
        "key": "aw==", "target": "MOD", "result": "EQUAL", "mod_revision": "3"
    }
    assert Compare.value(b"k", "NOT_EQUAL", b"v").to_json()["value"] == "dg=="
    with pytest.raises(ValueError):
        Compare(b"k", "VALUE", "EQUAL", 3)
    with pytest.raises(ValueError):
        Compare(b"k", "MOD", "EQUAL", b"3")
    with pytest.raises(ValueError):
        Compare(b"k", "MOD", "SAME", 3)  # type: ignore[arg-type]


# --- KV ----------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_put_range_delete(etcd: EtcdCluster, prefix: bytes) -> None:
    key = prefix + b"k"
    async with open_etcd_client(etcd.endpoints) as client:
        assert await client.get(key) is None
        rev1 = await client.put(key, b"v1")
        rev2 = await client.put(key, b"")
        assert rev2 == rev1 + 1
        kv = await client.get(key)
        assert kv is not None
        assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
            key, b"", rev1, rev2, 2, 0
        )
        old = await client.range(key, revision=rev1)
        assert [kv.value for kv in old.kvs] == [b"v1"]
        assert old.revision >= rev2
        with pytest.raises(EtcdRequestError) as info:
            await client.range(key, revision=rev2 + 1000)
        assert info.value.code == 11 and "future revision" in info.value.message
        assert await client.delete_range(key) == (1, rev2 + 1)
        assert await client.delete_range(key) == (0, rev2 + 1)
        assert (await client.range(key)).kvs == []


@pytest.mark.trio
async def test_prefix_ranges(etcd: EtcdCluster, prefix: bytes) -> None:
    async with open_etcd_client(etcd.endpoints) as client:
        for name in (b"c", b"a", b"b"):
            await client.put(prefix + b"dir/" + name, name)
        await client.put(prefix + b"dir0", b"outside")
        p = prefix + b"dir/"
        everything = await client.range(p, prefix_end(p))
        assert [kv.key for kv in everything.kvs] == [p + b"a", p + b"b", p + b"c"]
        assert (everything.count, everything.more) == (3, False)
        first = await client.range(p, prefix_end(p), limit=2)
        assert [kv.value for kv in first.kvs] == [b"a", b"b"]
        assert (first.count, first.more) == (3, True)
        assert await client.delete_range(p, prefix_end(p)) == (3, everything.revision + 1)
        assert [kv.key for kv in (await client.range(prefix, prefix_end(prefix))).kvs] == [
            prefix + b"dir0"
        ]


@pytest.mark.trio
async def test_txn_compare_and_swap(etcd: EtcdCluster, prefix: bytes) -> None:
    key, other = prefix + b"k", prefix + b"other"
    async with open_etcd_client(etcd.endpoints) as client:
        # Create only if absent.
        created = await client.txn([Compare.create(key, "EQUAL", 0)], [Put(key, b"1")])
        assert created.succeeded and created.responses == [None]
        again = await client.txn([Compare.create(key, "EQUAL", 0)], [Put(key, b"x")])
        assert not again.succeeded and again.revision == created.revision

        # Swap on the mod revision: the stale writer loses and reads what won.
        won = await client.txn(
            [Compare.mod(key, "EQUAL", created.revision)],
            [Put(key, b"2"), Put(other, b"o"), Range(key)],
            [Range(key)],
        )
        assert won.succeeded and won.revision == created.revision + 1
        assert won.responses[:2] == [None, None]
        current = won.responses[2]
        assert isinstance(current, list) and [kv.value for kv in current] == [b"2"]
        lost = await client.txn(
            [Compare.mod(key, "EQUAL", created.revision)], [Put(key, b"stale")], [Range(key)]
        )
        assert not lost.succeeded and lost.revision == won.revision
        seen = lost.responses[0]
        assert isinstance(seen, list) and seen[0].mod_revision == won.revision

        # Several guards, other targets, a delete.
        both = await client.txn(
            [
                Compare.value(key, "EQUAL", b"2"),
                Compare.version(key, "GREATER", 1),
                Compare.lease(key, "EQUAL", 0),
            ],
            [DeleteRange(prefix, prefix_end(prefix))],
        )
        assert both.succeeded and both.responses == [2]
        assert (await client.range(prefix, prefix_end(prefix))).kvs == []


# --- leases ------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_lease_keepalive_and_revoke(etcd: EtcdCluster, prefix: bytes) -> None:
    key = prefix + b"k"
    async with open_etcd_client(etcd.endpoints) as client:
        lease_id, ttl_s = await client.lease_grant(30)
        assert lease_id > 0 and ttl_s == 30
        await client.put(key, b"v", lease=lease_id)
        kv = await client.get(key)
        assert kv is not None and kv.lease == lease_id
        assert 0 < await client.lease_keepalive(lease_id) <= 30
        await client.lease_revoke(lease_id)
        assert await client.get(key) is None
        with pytest.raises(EtcdLeaseExpired) as info:
            await client.lease_keepalive(lease_id)
        assert info.value.lease_id == lease_id
        with pytest.raises(EtcdLeaseExpired):
            await client.lease_revoke(lease_id)
        with pytest.raises(EtcdLeaseExpired):
            await client.put(key, b"v", lease=lease_id)


@pytest.mark.trio
async def test_lease_expiry_deletes_keys(etcd: EtcdCluster, prefix: bytes) -> None:
    key = prefix + b"k"
    async with open_etcd_client(etcd.endpoints) as client:
        lease_id, ttl_s = await client.lease_grant(1)
        assert ttl_s >= 1
        await client.put(key, b"v", lease=lease_id)
        with trio.fail_after(ttl_s + 5):
            while await client.get(key) is not None:
                await trio.sleep(0.05)
        with pytest.raises(EtcdLeaseExpired):
            await client.lease_keepalive(lease_id)


# --- watch -------------------------------------------------------------------------------------


def _summary(events: list[WatchEvent]) -> list[tuple[str, bytes, bytes, bytes | None]]:
    return [
        (e.type, e.kv.key, e.kv.value, e.prev_kv.value if e.prev_kv else None) for e in events
    ]


@pytest.mark.trio
async def test_watch_from_a_revision_sees_history_then_live_changes(
    etcd: EtcdCluster, prefix: bytes
) -> None:
    a, b, c = prefix + b"a", prefix + b"b", prefix + b"c"
    async with open_etcd_client(etcd.endpoints) as client:
        start = await client.put(a, b"1")
        await client.put(b, b"1")
        await client.delete_range(a)
        await client.put(prefix_end(prefix), b"outside")  # not in the range
        events: list[WatchEvent] = []
        watch = client.watch(prefix, prefix_end(prefix), start_revision=start, prev_kv=True)
        async with watch as w:
            await client.txn([], [Put(c, b"1"), Put(b, b"2")])
            await client.delete_range(prefix, prefix_end(prefix))
            with trio.fail_after(5):
                async for batch in w:
                    assert batch.events
                    assert all(e.kv.mod_revision <= batch.revision for e in batch.events)
                    events += batch.events
                    if len(events) >= 7:
                        break
        assert _summary(events) == [
            ("PUT", a, b"1", None),
            ("PUT", b, b"1", None),
            ("DELETE", a, b"", b"1"),
            ("PUT", c, b"1", None),
            ("PUT", b, b"2", b"1"),
            ("DELETE", b, b"", b"2"),
            ("DELETE", c, b"", b"1"),
        ]
        revisions = [e.kv.mod_revision for e in events]
        assert revisions == sorted(revisions) and revisions[0] == start
        assert revisions[3] == revisions[4]  # one txn, one revision


@pytest.mark.trio
async def test_compacted_revisions(etcd: EtcdCluster, prefix: bytes) -> None:
    key = prefix + b"k"
    async with open_etcd_client(etcd.endpoints) as client:
        old = await client.put(key, b"1")
        new = await client.put(key, b"2")
        await client.compact(new)
        with pytest.raises(EtcdCompacted):
            await client.range(key, revision=old)
        with trio.fail_after(5):
            async with client.watch(key, start_revision=old) as w:
                with pytest.raises(EtcdCompacted) as info:
                    await w.__anext__()
        assert info.value.compact_revision == new
        async with client.watch(key, start_revision=new) as w:
            with trio.fail_after(5):
                batch = await w.__anext__()
        assert [e.kv.value for e in batch.events] == [b"2"]


@pytest.mark.trio
async def test_oversized_messages_are_refused(etcd: EtcdCluster, prefix: bytes) -> None:
    key = prefix + b"k"
    async with open_etcd_client(etcd.endpoints, max_message_bytes=1000) as client:
        rev = await client.put(key, b"x" * 2000)
        with pytest.raises(EtcdProtocolError, match="1000"):
            await client.range(key)
        async with client.watch(key, start_revision=rev) as w:
            with pytest.raises(EtcdProtocolError, match="1000"), trio.fail_after(5):
                await w.__anext__()


@pytest.mark.trio
async def test_garbage_from_the_server_is_a_protocol_error() -> None:
    async def answer_garbage(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            body = b"<html>not etcd</html>"
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, answer_garbage, 0)
        port = listeners[0].socket.getsockname()[1]
        async with open_etcd_client([f"http://127.0.0.1:{port}"]) as client:
            with pytest.raises(EtcdProtocolError, match="not JSON"):
                await client.range(b"k")
            with pytest.raises(EtcdProtocolError):
                async with client.watch(b"k", start_revision=1):
                    pass
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_request_or_reply_cut_off_by_the_timeout_is_closed_not_left_to_the_gc() -> None:
    """A request the server does not read, or a reply still trickling in, when the request
    times out: the client gives up, and the async generators httpx sends and reads bodies
    through are closed then and there (one left suspended is finalized by the garbage
    collector: an unraisable-exception warning, an error in this test suite)."""
    async def never_read(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    async def trickle(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{")
            with contextlib.suppress(trio.BrokenResourceError):  # until the client hangs up
                while True:  # a byte every 50 ms: never idle long enough for a read timeout
                    await trio.sleep(0.05)
                    await stream.send_all(b" ")

    big = b"v" * (64 << 20)  # more than loopback's socket buffers take without a reader
    for handler, call in ((never_read, lambda c: c.put(b"k", big)),
                          (trickle, lambda c: c.range(b"k"))):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, handler, 0)
            port = listeners[0].socket.getsockname()[1]
            async with open_etcd_client([f"http://127.0.0.1:{port}"],
                                        request_timeout_s=0.5) as client:
                with pytest.raises((EtcdUnavailable, EtcdIndeterminate)):
                    await call(client)
            nursery.cancel_scope.cancel()
        gc.collect()


# --- failover ----------------------------------------------------------------------------------


@pytest.mark.trio
async def test_failover_when_the_first_endpoint_dies(etcd3: EtcdCluster) -> None:
    leader = etcd3.wait_for_leader()
    follower = (leader + 1) % 3
    rest = [i for i in range(3) if i not in (leader, follower)]
    endpoints = [etcd3.endpoints[i] for i in (follower, leader, *rest)]
    async with open_etcd_client(endpoints, request_timeout_s=2.0) as client:
        rev = await client.put(b"k", b"1")
        async with client.watch(b"k", start_revision=rev) as w:
            with trio.fail_after(5):
                assert (await w.__anext__()).events[0].kv.value == b"1"
            etcd3.kill(follower)  # the endpoint the client and the watch use
            with pytest.raises(EtcdUnavailable), trio.fail_after(5):
                await w.__anext__()
        with trio.fail_after(10):  # a hang guard, not a timing: the next member answers
            rev2 = await client.put(b"k", b"2")
            assert (await client.range(b"k")).kvs[0].value == b"2"
        async with client.watch(b"k", start_revision=rev + 1) as w:  # resume on another member
            with trio.fail_after(5):
                assert [e.kv.mod_revision for e in (await w.__anext__()).events] == [rev2]

        # Now the leader: the survivors elect another one and reads go through meanwhile.
        etcd3.restart(follower)
        etcd3.kill(leader)
        with trio.fail_after(10):
            while True:
                try:
                    assert (await client.range(b"k")).kvs[0].value == b"2"
                    await client.put(b"k", b"3")
                    break
                except EtcdUnavailable:
                    await trio.sleep(0.05)
        assert etcd3.wait_for_leader() != leader


@pytest.mark.trio
async def test_failover_past_a_paused_member(etcd3: EtcdCluster) -> None:
    leader = etcd3.wait_for_leader()
    follower = (leader + 1) % 3
    endpoints = [etcd3.endpoints[(follower + k) % 3] for k in range(3)]
    async with open_etcd_client(endpoints, request_timeout_s=0.5) as client:
        await client.put(b"k", b"1")
        etcd3.pause(follower)
        try:
            # A read is retried on the next member once the paused one times out...
            with trio.fail_after(10):  # a hang guard
                assert (await client.range(b"k")).kvs[0].value == b"1"
        finally:
            etcd3.resume(follower)
    async with open_etcd_client(endpoints, request_timeout_s=0.5) as client:
        etcd3.pause(follower)
        try:
            # ...a write is not: it may be applied when the member wakes up.
            with pytest.raises(EtcdIndeterminate) as info:
                await client.put(b"k", b"2")
            assert [ep for ep, _ in info.value.errors] == [endpoints[0]]
            await client.put(b"k", b"3")  # the next call starts on another member
        finally:
            etcd3.resume(follower)


@pytest.mark.trio
async def test_unavailable_when_no_endpoint_answers() -> None:
    endpoints = [f"http://127.0.0.1:{port}" for port in free_tcp_ports(3)]
    async with open_etcd_client(endpoints, request_timeout_s=1.0) as client:
        with pytest.raises(EtcdUnavailable) as info, trio.fail_after(10):
            await client.range(b"k")
        assert [ep for ep, _ in info.value.errors] == endpoints
        with pytest.raises(EtcdUnavailable) as info:
            await client.put(b"k", b"v")
        assert type(info.value) is EtcdUnavailable  # never sent: not indeterminate
        with pytest.raises(EtcdUnavailable):
            async with client.watch(b"k", start_revision=1):
                pass
    with pytest.raises(ValueError):
        async with open_etcd_client([]):
            pass
    with pytest.raises(ValueError):
        async with open_etcd_client(["127.0.0.1:2379"]):
            pass


def test_errors_are_crdtdb_errors() -> None:
    from crdtdb.errors import CrdtdbError

    assert issubclass(EtcdError, CrdtdbError)
    assert issubclass(EtcdIndeterminate, EtcdUnavailable)
