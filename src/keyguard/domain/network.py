"""IP allow-lists and the client address of a request.

``permitted_ips`` entries are IPv4 or IPv6 addresses or CIDR ranges. They are
parsed once, when a key enters the snapshot, so a request pays only for parsing
its own address.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


@lru_cache(maxsize=4096)  # an import checks the same few entries for key after key
def canonical_entry(text: str) -> str | None:
    """The canonical spelling of an allow-list entry, or ``None`` if it is not one.

    A range with host bits set (``10.0.0.1/8``) is refused rather than silently
    widened: the user meant something, and guessing what is unsafe. An
    IPv4-mapped IPv6 entry (``::ffff:10.0.0.0/104``) is the IPv4 entry it maps
    (``10.0.0.0/8``), since that is how client addresses are judged.
    """
    if not text or text != text.strip() or "%" in text:  # no zone ids: not routable
        return None
    try:
        if "/" in text:
            network = ip_network(text, strict=True)
            if isinstance(network, IPv6Network) and network.subnet_of(_IPV4_MAPPED):
                mapped = network.network_address.ipv4_mapped
                network = IPv4Network((mapped, network.prefixlen - 96))
            return str(network)
        address = ip_address(text)
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return str(address)
    except ValueError:
        return None


_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Networks for canonical entries; a single address becomes a /32 or /128."""
    return tuple(ip_network(entry, strict=False) for entry in entries)


def parse_address(text: str) -> Address | None:
    """A client address, unwrapping IPv4-mapped IPv6 and refusing zone ids."""
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        if address.scope_id is not None:
            return None
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def is_permitted(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


@dataclass(frozen=True, slots=True)
class AllowList:
    """A key's allow-list as integer ranges: a check is a few integer comparisons.

    ``address in network`` costs ~0.2 µs per network; a restricted key is checked
    on every request it makes.
    """

    ranges: tuple[tuple[int, int, int], ...]  # (IP version, first, last)

    @classmethod
    def of(cls, networks: Iterable[Network]) -> "AllowList":
        return cls(
            tuple(
                (network.version, int(network.network_address), int(network.broadcast_address))
                for network in networks
            )
        )

    def permits(self, address: Address) -> bool:
        version, number = address.version, int(address)
        for range_version, first, last in self.ranges:
            if range_version == version and first <= number <= last:
                return True
        return False


def parse_client(text: str) -> Address | None:
    """:func:`parse_address` for the address of a request, memoised: clients repeat.

    Text longer than any address is parsed without the memo, so that hostile
    headers cannot fill it with large strings.
    """
    if len(text) > _LONGEST_ADDRESS:
        return parse_address(text)
    return _parsed_recently(text)


class ClientIPHeader(StrEnum):
    """The one request header that may name the client, when a trusted proxy sent it.

    Only one is ever believed: a proxy overwrites or appends to the header it
    manages and passes the client's others through untouched, so believing a
    second header would let the client choose its own address.
    """

    X_FORWARDED_FOR = "x-forwarded-for"
    X_REAL_IP = "x-real-ip"

    @classmethod
    def _missing_(cls, value: object) -> "ClientIPHeader | None":
        lowered = value.lower() if isinstance(value, str) else None
        return next((member for member in cls if member.value == lowered), None)


# A module global: looking a member up on its enum class costs ~0.1 µs per request.
_X_REAL_IP = ClientIPHeader.X_REAL_IP


def client_address(
    peer: str | None,
    values: list[str],
    trusted: tuple[Network, ...],
    header: ClientIPHeader = ClientIPHeader.X_FORWARDED_FOR,
) -> str | None:
    """The address a decision should judge.

    ``values`` are the request's ``header`` fields, as received; they are read
    only when the TCP peer is a trusted proxy. ``X-Forwarded-For``: walking the
    hops from the right, the first address that is not itself a trusted proxy is
    the client; everything to its left was written by the client and may be
    forged. ``X-Real-IP``: the proxy's own view of its client, so exactly one
    field holding an address; anything else leaves the client unknown (``None``),
    which no restricted key permits.
    """
    if peer is None:
        return None
    if not values or not trusted or not _judge(peer, trusted)[1]:
        return peer
    if header is _X_REAL_IP:
        return _judge(values[0].strip(), trusted)[0] if len(values) == 1 else None
    hops = [hop.strip() for value in values for hop in value.split(",")]
    for hop in reversed(hops):
        canonical, is_trusted = _judge(hop, trusted)
        if canonical is None:
            return hop  # unparseable: judged, and refused, as written
        if not is_trusted:
            return canonical
    return _judge(hops[0], trusted)[0]


def _judge(text: str, trusted: tuple[Network, ...]) -> tuple[str | None, bool]:
    """An address's canonical form and whether it is a trusted proxy.

    Memoised, since every request through a proxy asks this of the same few
    addresses; text longer than any address is judged without the memo, so that
    hostile headers cannot fill it with large strings.
    """
    if len(text) > _LONGEST_ADDRESS:
        return _judged(text, trusted)
    return _judged_recently(text, trusted)


_LONGEST_ADDRESS = 45  # IPv6 with an embedded IPv4 address


def _judged(text: str, trusted: tuple[Network, ...]) -> tuple[str | None, bool]:
    address = parse_address(text)
    if address is None:
        return None, False
    return str(address), is_permitted(address, trusted)


_judged_recently = lru_cache(maxsize=65_536)(_judged)
_parsed_recently = lru_cache(maxsize=65_536)(parse_address)
