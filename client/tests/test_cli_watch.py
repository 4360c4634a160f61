"""How `jobs watch` and `run` show a job's live events: a progress bar with loss, ETA and
cost on a terminal, a line per status and tenth of the way in a pipe, NDJSON with --json;
and the verdict (exit 1 for a job that did not complete, with its last reason)."""

import io
import json

import pytest
from computemesh_client import JobFailed, LiveEvent
from computemesh_client.cli import State, cli, watch
from rich.console import Console


def snapshot(status, step):
    return {"id": 5, "status": status, "cost_so_far": "0.000134",
            "progress": {"step": step, "total_steps": 6, "percent": round(100 * step / 6, 1),
                         "loss": 1.0 / (step or 1), "eta_seconds": 6 - step},
            "event": {"to_status": status, "message": f"now {status}"}}


EVENTS = [LiveEvent("job", snapshot("running", 0)), LiveEvent("job", snapshot("running", 0)),
          *[LiveEvent("metric", {"seq": i, "step": i, "total_steps": 6, "loss": 1.0 / i})
            for i in range(1, 7)],
          LiveEvent("log", {"seq": 1, "line": "epoch 2 done"}),
          LiveEvent("job", snapshot("verifying", 6)), LiveEvent("job", snapshot("completed", 6))]
DONE = {"id": 5, "status": "completed", "progress": {"metric": {"name": "accuracy", "value": 0.95}},
        "spend": {"spent": "0.000134"}, "timeline": [{"to_status": "completed", "message": "Verified"}]}


class StubClient:
    url, token = "http://cm.test", "tok"

    def __init__(self, final):
        self.final = final

    def watch(self, job_id, **kwargs):
        assert job_id == 5
        return iter(EVENTS)

    def job(self, job_id):
        return self.final


def console(monkeypatch, *, terminal: bool) -> io.StringIO:
    buffer = io.StringIO()
    monkeypatch.setattr(watch, "out", Console(file=buffer, force_terminal=terminal, width=160,
                                              color_system=None))
    return buffer


def test_on_a_terminal_a_progress_bar_with_loss_eta_and_cost(monkeypatch):
    buffer = console(monkeypatch, terminal=True)
    watch.watch_job(State(None), StubClient(DONE), 5, logs=True)
    text = buffer.getvalue()
    assert "job 5 completed" in text and "step 6/6" in text and "loss 0.1667" in text
    assert "0.000134 tUSD" in text and "epoch 2 done" in text and "verifying: now verifying" in text
    assert text.rstrip().endswith("Job 5 completed: accuracy 0.9500; cost 0.000134 tUSD")
    assert text.count("running: now running") == 1  # the same timeline entry in two snapshots


def test_in_a_pipe_a_line_per_status_and_tenth(monkeypatch, capsys):
    console(monkeypatch, terminal=False)
    watch.watch_job(State(None), StubClient(DONE), 5)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "job 5  running  0%  step 0/6  loss 1.0000  ETA 6s  cost 0.000134 tUSD"
    assert [line.split()[2] for line in lines] == ["running", "verifying", "completed"]


def test_with_json_every_event_is_a_line(monkeypatch, capsys):
    state = State(None)
    state.json = True
    watch.watch_job(state, StubClient(DONE), 5)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["seq"] for x in lines if x["type"] == "metric"] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["type"] == "job" and lines[-1]["status"] == "completed"
    assert not [x for x in lines if x["type"] == "log"]  # only with --logs


def test_a_job_that_did_not_complete_is_exit_1_with_its_reason(monkeypatch):
    console(monkeypatch, terminal=False)
    failed = {**DONE, "status": "failed",
              "timeline": [{"to_status": "failed", "message": "The label column needs two classes."}]}
    with pytest.raises(JobFailed) as raised:
        watch.watch_job(State(None), StubClient(failed), 5)
    assert raised.value.exit_code == 1
    assert str(raised.value) == "job 5 ended failed: The label column needs two classes."
    settled_after_cancel = {**DONE, "status": "settled", "timeline": [{"to_status": "cancelled"},
                                                                       {"to_status": "settled"}]}
    with pytest.raises(JobFailed):
        watch.watch_job(State(None), StubClient(settled_after_cancel), 5)


def test_every_command_takes_json_and_has_help():
    import click

    def commands(group: click.Group, prefix: str = ""):
        for name, command in group.commands.items():
            yield f"{prefix}{name}", command
            if isinstance(command, click.Group):
                yield from commands(command, f"{prefix}{name} ")

    found = dict(commands(cli))
    assert {"login", "whoami", "offers", "quote", "submit", "run", "jobs watch", "jobs download",
            "jobs logs", "datasets upload", "nodes create", "offers pause", "stake deposit"} <= set(found)
    for name, command in found.items():
        if name == "completion" or (isinstance(command, click.Group) and not command.invoke_without_command):
            continue
        assert "--json" in [o for p in command.params for o in getattr(p, "opts", [])], name
        assert command.help, name
