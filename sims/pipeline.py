"""A pipelined OVSDB JSON-RPC client for benchmarks: many requests in flight on one socket.

Reads and writes are multiplexed with select(): with large transactions in flight, blocking
on a send while the server blocks on its replies would deadlock. ``on_message`` sees every
message (replies and notifications) with its arrival time, for latency measurements.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crdtdb.ovsdb.jsonrpc import (
    CLOSED,
    NEED_DATA,
    ErrorReply,
    JsonRpcConnection,
    Notification,
    Reply,
)
from sims.workload import DB, check


def run_pipelined(sock_path: str | Path, txns: Sequence[list[Any]], *, window: int = 64,
                  timeout_s: float = 600,
                  on_send: Callable[[int, float], None] | None = None,
                  on_reply: Callable[[int, Any, float], None] | None = None) -> None:
    """Send every transaction with at most ``window`` unanswered; check every result."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(sock_path))
    sock.setblocking(False)
    decoder = json.JSONDecoder()
    inbuf = ""
    out = b""
    sent = done = 0
    deadline = time.monotonic() + timeout_s
    try:
        while done < len(txns):
            while sent < len(txns) and sent - done < window:
                out += json.dumps({"method": "transact", "params": [DB, *txns[sent]],
                                   "id": sent}).encode()
                if on_send is not None:
                    on_send(sent, time.perf_counter())
                sent += 1
            readable, writable, _ = select.select([sock], [sock] if out else [], [], 5)
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipelined run did not finish in {timeout_s} s")
            if writable:
                out = out[sock.send(out):]
            if not readable:
                continue
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("server closed the connection")
            inbuf += chunk.decode()
            while inbuf:
                try:
                    msg, end = decoder.raw_decode(inbuf)
                except ValueError:
                    break
                inbuf = inbuf[end:].lstrip()
                if msg.get("method") == "echo":
                    continue
                if msg.get("error") is not None:
                    raise RuntimeError(f"JSON-RPC error: {msg['error']}")
                check(msg["result"])
                if on_reply is not None:
                    on_reply(msg["id"], msg["result"], time.perf_counter())
                done += 1
    finally:
        sock.close()


class Receiver:
    """A second connection that only reads (monitor updates), non-blocking.

    Incoming bytes go through crdtdb's own codec, which finds message boundaries in linear
    time (re-parsing a growing buffer would make a 36 MB dump cost the client minutes).
    """

    def __init__(self, sock_path: str | Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(sock_path))
        self._codec = JsonRpcConnection(max_message_bytes=1 << 30)
        self.bytes_received = 0

    def request(self, method: str, params: list[Any], rid: Any = 0,
                timeout_s: float = 600) -> tuple[Any, float]:
        """Send a request and wait for its reply; returns (reply, seconds until it was parsed).
        """
        t0 = time.perf_counter()
        self.sock.setblocking(True)
        self.sock.sendall(json.dumps({"method": method, "params": params, "id": rid}).encode())
        self.sock.settimeout(timeout_s)
        while True:
            for msg, _ in self.poll(block=True):
                if msg.get("id") == rid:
                    return msg, time.perf_counter() - t0

    def poll(self, block: bool = False) -> list[tuple[dict[str, Any], float]]:
        """Messages that have arrived (each with its arrival time), as JSON-RPC objects."""
        out: list[tuple[dict[str, Any], float]] = []
        self.sock.setblocking(block)
        try:
            chunk = self.sock.recv(1 << 22)
        except BlockingIOError:
            return out
        now = time.perf_counter()
        if not chunk:
            raise RuntimeError("server closed the connection")
        self.bytes_received += len(chunk)
        self._codec.receive_data(chunk)
        while True:
            event = self._codec.next_event()
            if event is NEED_DATA or event is CLOSED:
                return out
            if isinstance(event, Reply):
                out.append(({"id": event.id, "result": event.result}, now))
            elif isinstance(event, ErrorReply):
                out.append(({"id": event.id, "error": event.error}, now))
            elif isinstance(event, Notification):
                out.append(({"method": event.method, "params": event.params}, now))

    def close(self) -> None:
        self.sock.close()
