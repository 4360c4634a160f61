"""The interface a multi-node job's collectives use: the one holding the node's advertised
address (workers/agent/collective_iface.py)."""

import socket

from workers.agent import collective_iface

# `ip -j addr show` on a host with loopback, two addresses on eth0 and a docker bridge.
IP_ADDR = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8},
                                   {"family": "inet6", "local": "::1", "prefixlen": 128}]},
    {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "203.0.113.7", "prefixlen": 24},
                                     {"family": "inet", "local": "203.0.113.8", "prefixlen": 24},
                                     {"family": "inet6", "local": "2001:db8::7", "prefixlen": 64}]},
    {"ifname": "docker0", "addr_info": [{"family": "inet", "local": "172.17.0.1", "prefixlen": 16}]},
    {"ifname": "wg0"},  # an interface without addresses
]


def test_the_interface_holding_the_address_is_found():
    assert collective_iface.interface_holding("203.0.113.7", IP_ADDR) == "eth0"
    assert collective_iface.interface_holding("203.0.113.8", IP_ADDR) == "eth0"  # a second one
    assert collective_iface.interface_holding("2001:db8:0::7", IP_ADDR) == "eth0"  # any spelling
    assert collective_iface.interface_holding("127.0.0.1", IP_ADDR) == "lo"
    assert collective_iface.interface_holding("172.17.0.1", IP_ADDR) == "docker0"


def test_an_address_no_interface_holds_gives_none():
    # Behind NAT the advertised (public) address is on no interface here.
    assert collective_iface.interface_holding("198.51.100.1", IP_ADDR) is None
    assert collective_iface.interface_holding("not an address", IP_ADDR) is None
    assert collective_iface.interface_holding("203.0.113.7", []) is None


def test_this_machines_loopback_is_found_with_and_without_iproute2():
    assert collective_iface.interface_for("127.0.0.1") == "lo"
    assert collective_iface.interface_holding("127.0.0.1", collective_iface._ioctl_addresses()) == "lo"
    own = {info["local"] for link in collective_iface._ioctl_addresses() for info in link["addr_info"]}
    assert "127.0.0.1" in own
    assert collective_iface.interface_for("localhost") == collective_iface.interface_for(
        socket.gethostbyname("localhost"))


def test_gloo_and_nccl_are_told_the_exact_interface():
    assert collective_iface.environment("eth0") == {"GLOO_SOCKET_IFNAME": "eth0",
                                                    "NCCL_SOCKET_IFNAME": "=eth0"}
