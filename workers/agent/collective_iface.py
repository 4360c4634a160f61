"""Which network interface a multi-node job's ranks use for their collectives.

Left alone, gloo advertises to its peers the address this machine's host name resolves to,
and falls back to loopback: 127.0.0.1 inside the sandbox (its UTS namespace is named
`localhost`), 127.0.0.1 or 127.0.1.1 on many hosts outside it. Ranks on another machine then
connect to their own loopback and the job never starts. The agent knows the address its
peers reach it at (its advertised address), so it names the interface that holds it
(GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME), and the ranks advertise that interface's address.
Gloo takes the interface's first IPv4 address: an advertised address that is a second one
on its interface is not what the ranks advertise (the peers' firewalls then refuse them).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import socket
import struct
import subprocess

SIOCGIFADDR = 0x8915  # linux/sockios.h: an interface's (primary) IPv4 address


def interface_holding(address: str, ip_addr_json: list[dict]) -> str | None:
    """The interface that holds `address`, from the output of `ip -j addr show`."""
    try:
        wanted = ipaddress.ip_address(address)
    except ValueError:
        return None
    for link in ip_addr_json:
        for info in link.get("addr_info") or []:
            try:
                if ipaddress.ip_address(info.get("local", "")) == wanted:
                    return link.get("ifname")
            except ValueError:
                continue
    return None


def _ip_addr_json() -> list[dict] | None:
    try:
        done = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10)
        return json.loads(done.stdout) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def _ioctl_addresses() -> list[dict]:
    """Each interface's primary IPv4 address, without iproute2 (in `ip -j addr`'s shape)."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address
                continue
            out.append({"ifname": name, "addr_info": [{"local": socket.inet_ntoa(raw[20:24])}]})
    return out


def interface_for(address: str) -> str | None:
    """The interface of this machine that holds `address` (an IP literal or a host name)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        try:
            address = socket.gethostbyname(address)
        except OSError:
            return None
    found = _ip_addr_json()
    return interface_holding(address, found if found is not None else _ioctl_addresses())


def environment(interface: str) -> dict[str, str]:
    """What tells gloo and NCCL to use `interface` (NCCL's "=" asks for this exact name, not
    every interface whose name starts with it)."""
    return {"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": f"={interface}"}
