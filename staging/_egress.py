"""Where alert webhooks may connect: no loopback, link-local or cloud metadata addresses.

A webhook URL is operator input that makes the server send requests; aimed at
``169.254.169.254`` or ``127.0.0.1:admin-port`` it turns alerts into requests
against the server's own network (SSRF). Rules:

1. Refused unless the sink allows private targets (``SinkSpec.allow_private``):
   loopback, link-local (``169.254.0.0/16``, ``fe80::/10``, which hold the
   cloud metadata services), unspecified, multicast and reserved addresses,
   and the metadata addresses outside those ranges (``fd00:ec2::254``,
   ``100.100.100.200``). IPv4-mapped IPv6 addresses are judged as IPv4.
   Private RFC 1918 / ULA ranges stay allowed: internal alert receivers live there.
2. The URL's host is checked when the sink is configured (literal addresses
   and ``localhost``) and the address actually connected to is checked at
   every delivery, after DNS resolution, so a name that later resolves (or
   rebinds) to a refused address is caught too.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

from tufota_core import InputError

_METADATA = (
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
)


def refused_address(address: str) -> str | None:
    """Why a webhook may not connect to ``address`` (rule 1), or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA:
        return f"{ip} is a cloud metadata service address"
    for test, what in (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local (cloud metadata services live there)"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_multicast, "multicast"),
        (ip.is_reserved, "reserved"),
    ):
        if test:
            return f"{ip} is a {what} address"
    return None


def check_literal_host(name: str, url: str) -> None:
    """Refuse a webhook URL whose host is a refused literal address or ``localhost``.

    Raises:
        InputError: the URL names a refused address; the message says how to allow it.
    """
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        why: str | None = f"{host} is a loopback name"
    else:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return  # a name: resolved and checked at each delivery
        why = refused_address(host)
    if why is not None:
        raise InputError(
            f"webhook sink {name}: {why}; allow it explicitly with --allow-private "
            "(allow_private) if this receiver is meant to be there"
        )
