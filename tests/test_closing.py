"""Whatever an open does, a failure or a cancellation part-way through releases what it had
taken: sockets, threads, change listeners, the log's lock. (With warnings as errors, a socket
left to the garbage collector fails whichever test runs when it is collected; these tests
collect on the spot.)"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from crdtdb.cli import main as cli_main
from crdtdb.consensus.ovsdb_relay import RelayOptions, open_ovsdb_relay
from crdtdb.engine import DatabaseSchema
from crdtdb.ovsdb.server import Remote, RemoteSyntaxError, SslFiles, open_ovsdb_server
from crdtdb.replica import Replica
from crdtdb.testing.ports import free_tcp_ports
from tests.support import nothing_left_open
from transport.discovery import open_mdns_discovery

MERGE_SCHEMA = Path(__file__).resolve().parent / "schemas" / "merge.ovsschema"


def _innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# --- the OVSDB server -------------------------------------------------------------------------

@pytest.mark.trio
@pytest.mark.parametrize("case", ["unix-path-too-long", "ssl-without-files",
                                  "ssl-files-missing"])
async def test_a_remote_that_fails_to_open_leaves_no_socket(case: str, tmp_path: Path) -> None:
    remote, files, error = {
        "unix-path-too-long": (f"punix:{tmp_path / ('x' * 120)}", None, OSError),
        "ssl-without-files": ("pssl:0:127.0.0.1", None, RemoteSyntaxError),
        "ssl-files-missing": ("pssl:0:127.0.0.1",
                              SslFiles(*(str(tmp_path / n) for n in ("k", "c", "ca"))),
                              OSError),
    }[case]
    with nothing_left_open():
        with pytest.raises(BaseException) as raised:
            async with open_ovsdb_server({}, [Remote.parse(remote)], ssl_files=files):
                pass
        assert isinstance(_innermost(raised.value), error)
        del raised


@pytest.mark.trio
async def test_an_open_cancelled_while_binding_leaves_no_socket(tmp_path: Path) -> None:
    with nothing_left_open():
        with trio.CancelScope() as scope:
            scope.cancel()
            async with open_ovsdb_server({}, [Remote.parse(f"punix:{tmp_path / 's'}")]):
                raise AssertionError("opened in a cancelled scope")
        assert scope.cancelled_caught
    assert not list(tmp_path.iterdir())


@pytest.mark.trio
async def test_a_failed_open_takes_its_change_listeners_off_the_databases(
        tmp_path: Path) -> None:
    replica = Replica.in_memory(DatabaseSchema.from_file(MERGE_SCHEMA).stored())
    before = len(replica._listeners)
    busy = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = busy.socket.getsockname()[1]
    # The unix socket opens, then the port in use fails: both are undone.
    remotes = [Remote.parse(f"punix:{tmp_path / 's'}"), Remote.parse(f"ptcp:{port}:127.0.0.1")]
    with pytest.raises(BaseException) as raised:
        async with open_ovsdb_server({replica.name: replica}, remotes):
            pass
    assert isinstance(_innermost(raised.value), OSError)
    assert len(replica._listeners) == before
    assert not (tmp_path / "s").exists()
    with trio.CancelScope() as scope:
        scope.cancel()
        async with open_ovsdb_server({replica.name: replica},
                                     [Remote.parse("ptcp:0:127.0.0.1")]):
            pass
    assert len(replica._listeners) == before
    await busy.aclose()
    replica.close()


@pytest.mark.trio
async def test_a_name_with_several_addresses_is_served_on_one_as_ovsdb_server_does() -> None:
    # ovsdb-server 3.1 given ptcp:0:localhost listens on the first address the name has.
    # (None: what trio resolves to every interface's address, 0.0.0.0 and ::.)
    every = await trio.open_tcp_listeners(0, host=None)
    for listener in every:
        await listener.aclose()
    if len(every) < 2:
        pytest.skip("no IPv6 here: None resolves to one address")
    with nothing_left_open():
        async with open_ovsdb_server(
                {}, [Remote("ptcp", port=0, host=None)]) as server:  # type: ignore[arg-type]
            assert len(server.listeners) == 1


# --- the relay to a clustered ovsdb-server ----------------------------------------------------

@pytest.mark.trio
async def test_a_relay_closed_while_it_asks_for_the_leader_closes_cleanly() -> None:
    schema = DatabaseSchema.from_file(MERGE_SCHEMA)
    mute = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = mute.socket.getsockname()[1]
    with nothing_left_open():
        async with trio.open_nursery() as nursery:
            accepted: list[trio.SocketStream] = []

            async def accept() -> None:
                while True:
                    accepted.append(await mute.accept())  # and never answer
            nursery.start_soon(accept)
            with trio.move_on_after(0.5) as waited:
                async with open_ovsdb_relay(f"tcp:127.0.0.1:{port}", [schema],
                                            options=RelayOptions()):
                    pass
            assert waited.cancelled_caught
            assert accepted
            with trio.fail_after(5):  # the relay's connection is closed: EOF
                while await accepted[0].receive_some(65536):
                    pass
            nursery.cancel_scope.cancel()
        for s in accepted:
            await s.aclose()
        await mute.aclose()


# --- discovery, the CLI, the tests' own helpers ------------------------------------------------

@pytest.mark.trio
async def test_a_node_id_mdns_cannot_announce_leaves_no_zeroconf_running() -> None:
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(Exception, match="Too long"):
        async with open_mdns_discovery("x" * 80, 7000, ["db"], addresses=["127.0.0.1"]):
            pass
    left = [t.name for t in threading.enumerate()
            if t.ident not in before and not t.name.startswith("Trio thread")]
    assert not left, left


def test_serve_refusing_its_arguments_leaves_the_data_dir_unlocked(tmp_path: Path) -> None:
    schema = DatabaseSchema.from_file(MERGE_SCHEMA).stored()
    for bad in (["--txn-history", "-1"], ["--discover"],
                ["--store", "log", "--listen", "127.0.0.1:0"]):
        rc = cli_main(["serve", str(MERGE_SCHEMA), "--data-dir", str(tmp_path),
                       "--remote", f"punix:{tmp_path / 's'}", *bad])
        assert rc == 2, bad
        Replica.open(tmp_path / schema.name, schema).close()  # not locked by serve


def test_free_ports_close_a_socket_that_failed_to_bind() -> None:
    with nothing_left_open(), pytest.raises(OSError):
        free_tcp_ports(1, host="192.0.2.1")  # (TEST-NET-1: no interface has it)
