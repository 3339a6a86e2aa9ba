"""The OVSDB protocol (RFC 7047) over JSON-RPC: codec, methods, monitors, _Server."""
