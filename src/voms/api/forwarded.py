"""Who is really calling: the peer, or the client a trusted proxy forwarded for.

``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only from the peers listed
in VOMS_TRUSTED_PROXIES (addresses or CIDR networks), never from any loopback caller:
otherwise anyone could choose the address their failed PINs count against. `voms
serve` leaves uvicorn's own proxy handling off; this runs first in the app instead.
"""

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(setting: str) -> tuple[Network, ...]:
    """The networks of a VOMS_TRUSTED_PROXIES value ("10.0.0.1, 192.168.0.0/16")."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False)
        for part in setting.split(",")
        if part.strip()
    )


def _trusted(host: str, networks: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


def resolve_client(scope: Scope, networks: tuple[Network, ...]) -> None:
    """Rewrite ``scope``'s client (and scheme) from the forwarding headers of a trusted
    peer: the client is the right-most address of X-Forwarded-For that is no trusted
    proxy itself (the ones left of it could be written by anyone)."""
    client = scope.get("client")
    if not networks or not client or not _trusted(client[0], networks):
        return
    forwarded_for: list[str] = []
    proto = None
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded_for.extend(v.strip() for v in value.decode("latin-1").split(","))
        elif name == b"x-forwarded-proto":
            proto = value.decode("latin-1").strip().lower()
    if proto in ("http", "https"):
        scope["scheme"] = proto
    for host in reversed([h for h in forwarded_for if h]):
        if not _trusted(host, networks):
            scope["client"] = (host, 0)
            return
