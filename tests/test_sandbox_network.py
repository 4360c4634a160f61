"""Issue 16, the sandbox's "peers" network (workers/agent/peer_firewall.py): a multi-node
job's sandbox shares the host's network, but what runs inside reaches only its job's peers.

Real parts: bubblewrap, the nftables table and cgroup the agent makes, and two emulated
hosts (network namespaces on a bridge, tests/netns.py) with real listeners: one is the
job's peer, the other is not. From inside the sandbox, a script tries each destination."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from workers.agent import launcher, peer_firewall
from workers.agent import sandbox as sandboxing

from .netns import Hosts, NetnsUnavailable
from .test_agent_sandboxed_run import an_agent, platform  # noqa: F401 (a fixture)
from .test_agent_sandboxed_run import run as run_assignment
from .test_agent_sandboxed_run import start_message as agent_start_message

FIREWALL_OK, WHY_NOT = peer_firewall.probe() if sandboxing.available() else (False, "no bubblewrap")
needs_firewall = pytest.mark.skipif(not FIREWALL_OK, reason=f"no peers firewall here: {WHY_NOT}")

PORT = 18777  # the listeners' TCP and UDP port on both emulated hosts
REDIS = ("127.0.0.1", 6379)  # the provider's own Redis (the test suite's)

LISTENER = """
import json, socket, sys, threading
port = int(sys.argv[1])
tcp = socket.create_server(("0.0.0.0", port))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", port))
got = {"tcp": 0, "udp": []}
def serve_tcp():
    while True:
        conn, _ = tcp.accept()
        got["tcp"] += 1
        conn.sendall(b"hello from the peer")
        conn.close()
def serve_udp():
    while True:
        got["udp"].append(udp.recvfrom(100)[0].decode())
for f in (serve_tcp, serve_udp):
    threading.Thread(target=f, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()  # until the test closes it
print(json.dumps(got), flush=True)
"""


@pytest.fixture
def hosts():
    """Two emulated hosts: 0 is the job's peer, 1 is any other machine on the network."""
    try:
        found = Hosts(2, rate_mbit=0).up()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    listeners = []
    try:
        for i in range(2):
            proc = subprocess.Popen([*found.prefix(i), sys.executable, "-c", LISTENER, str(PORT)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            listeners.append(proc)
        found.listeners = listeners  # type: ignore[attr-defined]
        yield found
    finally:
        for proc in listeners:
            proc.kill()
            proc.wait()
        found.down()


def heard(hosts: Hosts) -> list[dict]:
    """What each host's listener received (ends them)."""
    out = []
    for proc in hosts.listeners:  # type: ignore[attr-defined]
        stdout, _ = proc.communicate("", timeout=10)
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def job_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "agent" / "assignments" / name
    path.mkdir(parents=True)
    return path


def firewall(job: int, peers: list[str]) -> peer_firewall.PeerFirewall:
    return peer_firewall.PeerFirewall(job=job, assignment=secrets.randbelow(10**6) + 10**6,
                                      peers=peer_firewall.peer_addresses(peers))


def sandboxed_script(directory: Path, script: str, fw: peer_firewall.PeerFirewall, *args: str
                     ) -> tuple[list[str], dict[str, str], sandboxing.Sandbox]:
    (directory / "script.py").write_text(textwrap.dedent(script))
    cmd, env, box = launcher.sandboxed([sys.executable, str(directory / "script.py"), *args],
                                       launcher.environment(threads=1), job_dir=directory, nnodes=2,
                                       firewall=fw)
    assert box.network == "peers"
    return cmd, env, box


def run_all(*runs: tuple[Path, list[str], dict[str, str]], timeout: float = 60) -> list[tuple[int, str]]:
    async def go():
        processes = [await launcher.start(cmd, env, cwd) for cwd, cmd, env in runs]
        try:
            outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), timeout)
        finally:
            for p in processes:
                await launcher.stop(p, grace_s=2)
        return [(p.returncode, out.decode(errors="replace"))
                for p, (out, _) in zip(processes, outs, strict=True)]

    return asyncio.run(go())


def table_exists(name: str) -> bool:
    return subprocess.run(["nft", "list", "table", "inet", name], capture_output=True).returncode == 0


def findings(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith("{")][-1])


ATTACK = """
import json, socket, sys, time
peer, other, port = sys.argv[1], sys.argv[2], int(sys.argv[5])
out = {}
def tcp(name, host, port):
    try:
        s = socket.create_connection((host, port), timeout=3)
    except OSError as exc:
        out[name] = type(exc).__name__
        return
    with s:
        s.settimeout(1)
        try:
            said = s.recv(100).decode(errors="replace")
        except OSError:
            said = ""
        out[name] = ("connected: " + said).strip()
tcp("redis", "127.0.0.1", 6379)
tcp("peer", peer, port)
tcp("other_host", other, port)
tcp("host_listener", sys.argv[3], int(sys.argv[4]))
for name, host in (("udp_peer", peer), ("udp_other_host", other)):
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(name.encode(), (host, port))
        out[name] = "sent"
    except OSError as exc:
        out[name] = type(exc).__name__
# Its own listener on loopback (torchrun's store, gloo) works.
own = socket.create_server(("127.0.0.1", 0))
c = socket.create_connection(own.getsockname()[:2], timeout=3)
own.accept()[0].sendall(b"own")
out["own_listener"] = "connected: " + c.recv(10).decode()
time.sleep(0.5)  # the datagrams arrive
print(json.dumps(out))
"""


@needs_firewall
def test_a_multi_node_sandbox_reaches_its_peers_and_nothing_else(tmp_path, hosts):
    assert redis.Redis(*REDIS).ping()  # the provider's Redis is there, outside the sandbox
    # A service of the host's own outside the sandbox, on the address the peers know it by.
    host_service = socket.create_server((hosts.gateway, 0))
    host_service.settimeout(0.1)
    directory = job_dir(tmp_path, "7")
    fw = firewall(secrets.randbelow(10**6) + 10**6, [hosts.addr(0)])
    cmd, env, box = sandboxed_script(directory, ATTACK, fw, hosts.addr(0), hosts.addr(1),
                                     *map(str, host_service.getsockname()[:2]), str(PORT))
    listed = subprocess.run(["nft", "list", "table", "inet", fw.table], capture_output=True, text=True)
    assert listed.returncode == 0 and hosts.addr(0) in listed.stdout
    try:
        [(code, output)] = run_all((directory, cmd, env))
    finally:
        box.close()
    try:
        host_service.accept()
        reached_host_service = True
    except TimeoutError:
        reached_host_service = False
    host_service.close()
    assert code == 0, output
    found = findings(output)
    assert found["peer"] == "connected: hello from the peer", found
    assert found["redis"] == "ConnectionRefusedError", found
    assert found["other_host"] == "ConnectionRefusedError", found
    assert found["host_listener"] == "ConnectionRefusedError", found
    assert not reached_host_service
    assert found["own_listener"] == "connected: own"
    peer, other = heard(hosts)
    assert peer == {"tcp": 1, "udp": ["udp_peer"]}
    assert other == {"tcp": 0, "udp": []}  # the datagram to a non-peer never left
    # The sandbox ended: its table and its cgroup are gone.
    assert not table_exists(fw.table)
    assert not fw.dir.exists() and not fw.job_dir.exists()


@needs_firewall
def test_two_sandboxes_of_one_job_on_one_host_reach_each_other_and_not_another_jobs(tmp_path):
    """Two agents on one host (as in the end-to-end tests) run two ranks of a job: each
    reaches the other's listener on 127.0.0.1. A third sandbox, of another job, does not."""
    job = secrets.randbelow(10**6) + 10**6
    port = launcher.free_port()
    server = """
        import socket, sys, time
        s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
        s.settimeout(0.2)
        until = time.monotonic() + 10  # whoever reaches it in that time gets an answer
        while time.monotonic() < until:
            try:
                c, _ = s.accept()
            except TimeoutError:
                continue
            c.sendall(b"rank 0")
            c.close()
        print("{}")
    """
    client = """
        import json, socket, sys, time
        out = {}
        for _ in range(24):  # 6 s: the server may still be starting
            try:
                with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3) as c:
                    out["result"] = "connected: " + c.recv(10).decode()
                    break
            except ConnectionRefusedError as exc:
                out["result"] = type(exc).__name__
                time.sleep(0.25)
        print(json.dumps(out))
    """
    runs, boxes = [], []
    try:
        for name, job_id, script, args in (("0", job, server, (str(port),)),
                                           ("1", job, client, (str(port),)),
                                           ("2", job + 1, client, (str(port),))):
            directory = job_dir(tmp_path, name)
            cmd, env, box = sandboxed_script(directory, script, firewall(job_id, ["192.0.2.1"]), *args)
            boxes.append(box)
            runs.append((directory, cmd, env))
        (code0, out0), (code1, out1), (code2, out2) = run_all(*runs)
    finally:
        for box in boxes:
            box.close()
    assert (code0, code1, code2) == (0, 0, 0), out0 + out1 + out2
    assert findings(out1) == {"result": "connected: rank 0"}
    assert findings(out2) == {"result": "ConnectionRefusedError"}


def test_peer_addresses_must_be_ip_literals():
    found = peer_firewall.peer_addresses(["10.0.0.2", " 10.0.0.2", "::1"])
    assert [str(a) for a in found] == ["10.0.0.2", "::1"]
    for bad in ("peer.example", "10.0.0.0/8", '10.0.0.1" accept', "0.0.0.0", "224.0.0.1", ""):
        with pytest.raises(peer_firewall.FirewallError):
            peer_firewall.peer_addresses([bad])


@needs_firewall
def test_the_agent_removes_a_dead_sandboxs_table_and_cgroup_at_start():
    dead = firewall(secrets.randbelow(10**6) + 10**6, ["192.0.2.1"])
    dead.agent = 1  # not this process: an agent that died without cleaning up
    dead.apply()
    live = firewall(dead.job, ["192.0.2.1"])
    live.apply()
    starting = firewall(dead.job, ["192.0.2.1"])  # made just now, its process not in it yet
    starting.apply()
    try:
        # Both made long ago: past the grace left to sandboxes starting now (another agent's
        # on this host, between its cgroup and its first process, must not be touched).
        long_ago = time.time() - 10 * peer_firewall.STALE_AFTER_S
        for directory in (dead.dir, live.dir):
            os.utime(directory, (long_ago, long_ago))
        keeper = subprocess.Popen(["sleep", "30"])  # the live sandbox has a process
        (live.dir / "cgroup.procs").write_text(str(keeper.pid))
        removed = peer_firewall.remove_stale()
        assert str(dead.dir) in removed and f"nft table inet {dead.table}" in removed
        assert not dead.dir.exists()
        assert not table_exists(dead.table)
        assert live.dir.exists()
        assert table_exists(live.table)
        assert starting.dir.exists() and table_exists(starting.table)
    finally:
        starting.remove()
        live.remove()
        dead.remove()
    assert keeper.wait(timeout=10) != 0  # killed with its sandbox
    assert not live.dir.exists() and not table_exists(live.table)


def test_an_agent_without_the_firewall_refuses_multi_node_consumers_code(tmp_path, platform):  # noqa: F811
    """Refused before a byte of the job is fetched (the platform does not send it there)."""
    agent = an_agent(tmp_path, platform.server_port)
    assert agent.sandbox.peer_firewall is False
    start = agent_start_message(b"X = 1\n", nnodes=2, rdzv={"host": "127.0.0.1", "port": 29500})
    finished = run_assignment(agent, start, timeout=60)
    assert [f["status"] for f in finished] == ["failed"]
    assert "cannot confine a multi-node job's code to its peers" in finished[0]["error"]
    assert [t for t, _ in agent.sent] == ["assignment.finished"]  # never accepted
    assert not any(path == "/bundle/" for path, _ in platform.RequestHandlerClass.received)
