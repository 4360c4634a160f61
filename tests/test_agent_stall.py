"""The agent's stall watchdog: a node's training is stopped as hung only when its own ranks
show nothing for the stall timeout, and every node's leader's `alive` events count (tests/
test_node_liveness.py runs it for real across two agents)."""

import asyncio
from types import SimpleNamespace

import pytest

from workers.agent import cli
from workers.agent.run_assignment import STARTUP_GRACE_S, AssignmentRun


def a_run(tmp_path, stall_s: float = 10, grace_s: float = STARTUP_GRACE_S) -> AssignmentRun:
    sent = []

    async def send_data(assignment, type_, **fields):
        sent.append((type_, fields))

    agent = SimpleNamespace(workdir=tmp_path, stall_timeout_s=stall_s, startup_grace_s=grace_s,
                            send_data=send_data,
                            faults=SimpleNamespace(vanish=0), display=SimpleNamespace(
                                assignment_progress=lambda *a, **k: None,
                                assignment_started=lambda *a, **k: None))
    run = AssignmentRun(agent, {"assignment": 7, "job": 3})
    run.sent = sent
    return run


def test_a_node_is_hung_after_the_stall_timeout_without_a_sign_of_its_own_ranks(tmp_path):
    run = a_run(tmp_path)
    run.launched_at = run.last_activity = 1000.0
    asyncio.run(run._forward([{"type": "alive", "step": 0}]))  # the group formed
    run.last_activity = 1000.0
    assert not run.stalled(1010.0)
    assert run.stalled(1010.5)


def test_alive_events_keep_a_node_alive_carry_its_step_and_are_not_forwarded(tmp_path):
    run = a_run(tmp_path)
    run.launched_at = run.last_activity = 0.0
    for step in range(0, 100, 10):  # ten stall timeouts of steps, an event every 2 s
        asyncio.run(run._forward([{"type": "alive", "step": step, "at": 1.0}]))
        assert not run.stalled(run.last_activity + 9.9)
    assert run.step == 90
    assert run.sent == []  # no progress message: only rank 0's progress is the job's


def test_before_the_ranks_first_event_the_startup_grace_applies(tmp_path):
    run = a_run(tmp_path)
    run.launched_at = run.last_activity = 0.0
    assert not run.stalled(STARTUP_GRACE_S - 1)  # importing torch, forming the group
    assert run.stalled(STARTUP_GRACE_S + 1)
    long = a_run(tmp_path, stall_s=180)  # the default: the timeout is longer than the grace
    long.launched_at = long.last_activity = 0.0
    assert not long.stalled(179) and long.stalled(181)
    short = a_run(tmp_path, grace_s=30)  # --startup-grace 30
    short.launched_at = short.last_activity = 0.0
    assert not short.stalled(29) and short.stalled(31)


@pytest.mark.parametrize(("option", "variable", "default"), [
    ("--stall-timeout", "AGENT_STALL_TIMEOUT_S", 180),
    ("--startup-grace", "AGENT_STARTUP_GRACE_S", STARTUP_GRACE_S),
])
def test_the_stall_timeout_and_startup_grace_are_options_and_environment_variables(
        monkeypatch, option, variable, default):
    base = ["--server", "http://127.0.0.1:8000", "--token", "cmn_x"]
    attr = option[2:].replace("-", "_")
    assert getattr(cli.parse(base), attr) == default
    assert getattr(cli.parse([*base, option, "8"]), attr) == 8
    monkeypatch.setenv(variable, "12.5")
    assert getattr(cli.parse(base), attr) == 12.5
    for bad in ("0", "-1"):
        with pytest.raises(SystemExit):
            cli.parse([*base, option, bad])
    monkeypatch.setenv(variable, "soon")
    with pytest.raises(SystemExit):  # a bad value fails loudly, as the option's would
        cli.parse(base)


def test_a_node_whose_ranks_finished_is_not_judged_by_the_stall_timeout(tmp_path):
    """After its leader's node_finished only rank 0's evaluation and torchrun's exit barrier
    are left: quiet on this node, so the shutdown grace applies instead (seen: a node rank 1
    stopped as hung 10 s after its last step while rank 0 evaluated)."""
    run = a_run(tmp_path)
    asyncio.run(run._forward([{"type": "node_finished", "step": 50, "comm_bytes": 1, "comm_bytes_ddp": 2}]))
    assert run.node_done and run.step == 50 and run.comm == {"comm_bytes": 1, "comm_bytes_ddp": 2}
