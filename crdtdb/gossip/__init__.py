"""Replicas that converge: the gossip protocol (sans-I/O) and its messages."""

from crdtdb.gossip.messages import GossipProtocolError
from crdtdb.gossip.protocol import Disconnect, Gossip, GossipConfig, GossipStatistics, Send

__all__ = ["Disconnect", "Gossip", "GossipConfig", "GossipProtocolError", "GossipStatistics",
           "Send"]
