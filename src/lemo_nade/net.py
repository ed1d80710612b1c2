"""Which hosts are this machine: the LLM client (a local endpoint needs no key) and the
dashboard (which binds and answers only on loopback unless told otherwise) ask the same."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str | None) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); never a name to resolve."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
