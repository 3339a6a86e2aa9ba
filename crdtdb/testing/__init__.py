"""Helpers for testing and benchmarking crdtdb against the real OVSDB tools (like trio.testing).

Nothing here is used by crdtdb at run time.
"""
