"""Test-only faults (COMPUTEMESH_FAULTS) stay in tests: the agent's CLI refuses to start
with them unless told it is a test, and a platform without ALLOW_AGENT_FAULTS closes the
socket of an agent that announces them, saying why."""

import asyncio
import json
import os
import subprocess
import sys

import pytest
from django.test import override_settings

from marketplace.models import Node

from .browser_support import ROOT
from .test_agent_socket import connect, token_node

pytestmark = pytest.mark.django_db(transaction=True)


def _agent_cli(faults: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.agent", "--server", "http://127.0.0.1:9",
                           "--token", "cmn_x", "--plain", *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COMPUTEMESH_FAULTS": faults})


def test_the_agent_cli_refuses_faults_unless_told_it_is_a_test():
    refused = _agent_cli("skip_steps=0.1")
    assert refused.returncode == 2 and "for tests only" in refused.stderr
    assert "--allow-test-faults" in refused.stderr
    bad = _agent_cli("skip_everything=1", "--allow-test-faults")
    assert bad.returncode == 2 and "unknown fault 'skip_everything'" in bad.stderr


async def _hello(faults: dict) -> tuple[dict, dict | None]:
    comm = connect("cmn_faulty")
    connected, _ = await comm.connect()
    assert connected
    await comm.send_to(text_data=json.dumps({"type": "hello", "id": "h1", "agent_version": "t",
                                             "hardware": {}, "running": [], "faults": faults}))
    first = json.loads(await comm.receive_from(timeout=10))
    closed = None
    if first["type"] == "error":
        closed = await comm.receive_output(timeout=10)
    await comm.disconnect()
    return first, closed


@override_settings(ALLOW_AGENT_FAULTS=False)
def test_a_platform_without_allow_agent_faults_refuses_a_faulty_agent():
    node = token_node(token="cmn_faulty")
    first, closed = asyncio.run(_hello({"skip_steps": 0.1}))
    assert first["code"] == "faults_refused" and "test-only faults" in first["message"]
    assert closed == {"type": "websocket.close", "code": 4403}
    node.refresh_from_db()
    assert node.status == Node.Status.OFFLINE  # not marked online by a refused hello


@override_settings(ALLOW_AGENT_FAULTS=False)
def test_an_agent_without_faults_is_welcome():
    token_node(token="cmn_faulty")
    first, _ = asyncio.run(_hello({}))
    assert first["type"] == "welcome"
