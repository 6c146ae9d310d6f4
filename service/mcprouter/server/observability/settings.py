"""Parsing of the observability settings (the fields live in ``config.Settings``)."""

from __future__ import annotations


def parse_address(address: str) -> tuple[str | None, int]:
    """``host:port`` (``[v6]:port``, ``:port`` for every interface) as (host, port).

    Raises:
        ValueError: Not of that shape, or the port is out of range.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    port = int(port_text)
    if not 0 <= port <= 65_535:
        raise ValueError(f"port out of range in {address!r}")
    host = host.strip("[]")
    return (host or None), port
