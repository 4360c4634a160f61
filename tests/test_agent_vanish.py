"""The `vanish` fault's trigger: the agent disappears once training reaches the given share
of the job's steps, and never without the fault. (What vanishing does to the platform runs
for real in tests/chaos: the agent exits with status 75 and the node is lost.)"""

from types import SimpleNamespace

from workers.agent.run_assignment import AssignmentRun
from workers.training import faults


def run_with(tmp_path, spec: str) -> AssignmentRun:
    agent = SimpleNamespace(workdir=tmp_path, faults=faults.parse(spec))
    return AssignmentRun(agent, {"assignment": 7, "job": 3})


def test_vanish_is_due_at_its_share_of_the_steps(tmp_path):
    run = run_with(tmp_path, "vanish=0.5")
    assert not run._vanish_due({"step": 0, "total_steps": 880})  # the started event
    assert not run._vanish_due({"step": 439})  # later events: the total is remembered
    assert run._vanish_due({"step": 440})
    assert run_with(tmp_path, "vanish=0.5")._vanish_due({"step": 500, "total_steps": 880})  # resumed past it


def test_no_fault_no_vanishing(tmp_path):
    run = run_with(tmp_path, "skip_steps=0.1")
    assert not run._vanish_due({"step": 880, "total_steps": 880})
