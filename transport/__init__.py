"""Pluggable transports for gossip: tcp (+ mutual TLS) between real nodes; discovery."""

from transport.base import PeerDown, PeerUp, Received, Transport, TransportEvent
from transport.framing import FrameDecoder, LocalProtocolError, RemoteProtocolError, frame

__all__ = ["FrameDecoder", "LocalProtocolError", "PeerDown", "PeerUp", "Received",
           "RemoteProtocolError", "Transport", "TransportEvent", "frame"]
