from ipaddress import ip_address

import pytest

from keyguard.domain.network import (
    AllowList,
    ClientIPHeader,
    canonical_entry,
    client_address,
    is_permitted,
    parse_address,
    parse_client,
    parse_networks,
)


@pytest.mark.parametrize(
    ("entry", "canonical"),
    [
        ("192.168.1.1", "192.168.1.1"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::1", "::1"),
    ],
)
def test_valid_entries_are_canonical(entry: str, canonical: str) -> None:
    assert canonical_entry(entry) == canonical


@pytest.mark.parametrize(
    ("entry", "canonical"),
    [
        pytest.param("::ffff:192.0.2.1", "192.0.2.1", id="address"),
        pytest.param("::FFFF:c000:201", "192.0.2.1", id="address_in_hex"),
        pytest.param("::ffff:192.0.2.1/128", "192.0.2.1/32", id="single_host_range"),
        pytest.param("::ffff:10.0.0.0/104", "10.0.0.0/8", id="range"),
        pytest.param("::ffff:0.0.0.0/96", "0.0.0.0/0", id="every_ipv4_address"),
    ],
)
def test_ipv4_mapped_entries_are_the_ipv4_entries_they_map(entry: str, canonical: str) -> None:
    # Client addresses are unwrapped the same way (parse_address), so only this
    # form can ever match.
    assert canonical_entry(entry) == canonical


def test_ipv4_mapped_entry_permits_its_ipv4_client_however_it_connects() -> None:
    networks = parse_networks([canonical_entry("::ffff:10.0.0.0/104") or ""])
    for client in ("10.1.2.3", "::ffff:10.1.2.3"):
        address = parse_address(client)
        assert address is not None
        assert is_permitted(address, networks)
    assert not is_permitted(ip_address("11.0.0.1"), networks)


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "256.1.1.1",
        "10.0.0.1/8",
        "1.2.3",
        "localhost",
        " 1.2.3.4",
        "1.2.3.4 ",
        "01.2.3.4",
        "fe80::1%eth0/64",
        "1.2.3.4/33",
        "*",
        "::ffff:10.0.0.1/104",
    ],
)
def test_invalid_entries_are_refused(entry: str) -> None:
    assert canonical_entry(entry) is None


def test_address_in_range_is_permitted() -> None:
    networks = parse_networks(["10.0.0.0/8", "192.168.1.1", "2001:db8::/32"])
    assert is_permitted(ip_address("10.20.30.40"), networks)
    assert is_permitted(ip_address("192.168.1.1"), networks)
    assert is_permitted(ip_address("2001:db8::5"), networks)
    assert not is_permitted(ip_address("192.168.1.2"), networks)
    assert not is_permitted(ip_address("11.0.0.1"), networks)


def test_empty_allow_list_permits_nobody() -> None:
    assert not is_permitted(ip_address("10.0.0.1"), parse_networks([]))


def test_ipv4_mapped_ipv6_client_is_judged_as_ipv4() -> None:
    assert parse_address("::ffff:10.0.0.1") == ip_address("10.0.0.1")


@pytest.mark.parametrize("text", ["fe80::1%eth0", "10.0.0.1:80", " 10.0.0.1", "", "x"])
def test_unparseable_or_zoned_client_address_is_none(text: str) -> None:
    assert parse_address(text) is None


TRUSTED = parse_networks(["127.0.0.1", "10.0.0.0/8"])
REAL_IP = ClientIPHeader.X_REAL_IP


def test_forwarded_for_is_the_default_header() -> None:
    assert client_address("127.0.0.1", ["198.51.100.1"], TRUSTED) == "198.51.100.1"


def test_forwarded_for_is_ignored_from_untrusted_peer() -> None:
    assert client_address("203.0.113.5", ["198.51.100.1"], TRUSTED) == "203.0.113.5"


def test_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    assert client_address("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"


def test_right_most_untrusted_forwarded_address_wins() -> None:
    forged_then_real = ["6.6.6.6, 198.51.100.1, 10.1.1.1"]
    assert client_address("127.0.0.1", forged_then_real, TRUSTED) == "198.51.100.1"


def test_repeated_forwarded_for_fields_are_one_list_of_hops() -> None:
    fields = ["6.6.6.6", "198.51.100.1, 10.1.1.1"]
    assert client_address("127.0.0.1", fields, TRUSTED) == "198.51.100.1"


def test_all_trusted_chain_yields_left_most() -> None:
    assert client_address("127.0.0.1", ["10.0.0.7, 10.0.0.8"], TRUSTED) == "10.0.0.7"


def test_unparseable_forwarded_hop_is_returned_as_written_to_be_refused() -> None:
    assert client_address("127.0.0.1", ["not-an-ip"], TRUSTED) == "not-an-ip"
    assert parse_address("not-an-ip") is None


def test_missing_peer_is_none() -> None:
    assert client_address(None, ["1.2.3.4"], TRUSTED) is None
    assert client_address(None, ["1.2.3.4"], TRUSTED, REAL_IP) is None


@pytest.mark.parametrize("header", list(ClientIPHeader), ids=str)
def test_trusted_peer_without_the_header_is_the_client(header: ClientIPHeader) -> None:
    assert client_address("127.0.0.1", [], TRUSTED, header) == "127.0.0.1"


def test_real_ip_from_trusted_proxy_is_the_client() -> None:
    assert client_address("127.0.0.1", ["198.51.100.9"], TRUSTED, REAL_IP) == "198.51.100.9"


def test_real_ip_is_canonical() -> None:
    assert client_address("127.0.0.1", ["::FFFF:198.51.100.9"], TRUSTED, REAL_IP) == (
        "198.51.100.9"
    )


def test_real_ip_naming_a_trusted_proxy_is_still_the_client() -> None:
    assert client_address("127.0.0.1", ["10.0.0.2"], TRUSTED, REAL_IP) == "10.0.0.2"


def test_real_ip_from_untrusted_peer_is_ignored() -> None:
    assert client_address("203.0.113.5", ["198.51.100.9"], TRUSTED, REAL_IP) == "203.0.113.5"


def test_real_ip_is_ignored_without_trusted_proxies() -> None:
    assert client_address("127.0.0.1", ["198.51.100.9"], (), REAL_IP) == "127.0.0.1"


@pytest.mark.parametrize(
    "fields",
    [
        ["198.51.100.9", "198.51.100.9"],
        ["6.6.6.6", "198.51.100.9"],
        ["198.51.100.9, 6.6.6.6"],
        ["198.51.100.9:4711"],
        ["not-an-ip"],
        [""],
    ],
    ids=["repeated", "two_addresses", "a_list", "with_port", "not_an_address", "empty"],
)
def test_real_ip_that_is_not_exactly_one_address_leaves_the_client_unknown(
    fields: list[str],
) -> None:
    assert client_address("127.0.0.1", fields, TRUSTED, REAL_IP) is None


@pytest.mark.parametrize("header", ["x-real-ip", "X-Real-IP", "X-REAL-IP"])
def test_header_names_are_case_insensitive(header: str) -> None:
    assert ClientIPHeader(header) is REAL_IP


@pytest.mark.parametrize(
    "client",
    ["10.0.0.0", "10.255.255.255", "11.0.0.0", "9.255.255.255", "192.168.1.1", "192.168.1.2",
     "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::", "::a00:1", "::1"],
)  # fmt: skip
def test_allow_list_permits_exactly_what_its_networks_contain(client: str) -> None:
    networks = parse_networks(["10.0.0.0/8", "192.168.1.1", "2001:db8::/32"])
    address = ip_address(client)
    assert AllowList.of(networks).permits(address) is is_permitted(address, networks)


def test_allow_list_never_confuses_an_ipv6_address_with_the_ipv4_one_of_the_same_number() -> None:
    assert not AllowList.of(parse_networks(["10.0.0.1"])).permits(ip_address("::a00:1"))


@pytest.mark.parametrize(
    "text", ["203.0.113.9", "::ffff:203.0.113.9", "fe80::1%eth0", "nope", "1" * 60]
)
def test_parse_client_answers_as_parse_address(text: str) -> None:
    assert parse_client(text) == parse_address(text)
