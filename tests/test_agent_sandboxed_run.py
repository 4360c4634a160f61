"""A consumer's bundle run by the agent's own AssignmentRun (issue 16): the agent fetches the
code and the data over real HTTP from a stand-in for the platform, runs torchrun inside the
sandbox, and uploads the checkpoints and the model; a hostile bundle that forges events to
make the agent upload the agent's token through a planted link gets nothing out; a node
that cannot build the sandbox refuses consumers' code."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from workers.agent import sandbox as sandboxing
from workers.agent.run_assignment import AssignmentRun

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tasks" / "vibration"
TOKEN = "cmn_agent-token-never-uploaded-77"

needs_bwrap = pytest.mark.skipif(not sandboxing.available(),
                                 reason="bubblewrap cannot build a sandbox here (apt-get install bubblewrap)")


class Platform(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    received: list[tuple[str, bytes]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        if body is not None:
            self.wfile.write(body)

    def do_PUT(self):  # noqa: N802
        self.received.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def platform():
    Platform.files, Platform.received = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Platform)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def an_agent(workdir: Path, port: int, *, available: bool = True) -> SimpleNamespace:
    sent: list[tuple[str, dict]] = []

    async def send_data(assignment, type_, **fields):
        sent.append((type_, fields))

    quiet = lambda *a, **k: None  # noqa: E731
    return SimpleNamespace(
        workdir=workdir, stall_timeout_s=120, send_data=send_data, sent=sent, cpu_threads=2,
        faults=SimpleNamespace(vanish=0, withhold_checkpoints=0), advertise_addr="127.0.0.1",
        url=lambda path: f"http://127.0.0.1:{port}{path}", forget=quiet,
        sandbox=sandboxing.Settings(mode="custom", available=available),
        display=SimpleNamespace(log=quiet, assignment_started=quiet, assignment_progress=quiet,
                                assignment_done=quiet))


def start_message(code: bytes, **extra) -> dict:
    Platform.files["/bundle/"] = code
    return {"assignment": 12, "job": 4, "node_rank": 0, "nnodes": 1, "nproc_per_node": 2,
            "template": None, "token": "assignment-token", "upload_url": "/up/",
            "bundle": {"url": "/bundle/", "sha256": hashlib.sha256(code).hexdigest(), "kind": "py",
                       "entry": "task:VibrationFaults"},
            "params": {"epochs": 1, "batch_size": 16, "learning_rate": 0.05, "channels": 8,
                       "label_smoothing": 0.0, "checkpoint_every": 10, "seed": 0},
            "dataset": {"kind": "csv"}, "dataset_url": "/data/", **extra}


def run(agent, start: dict, timeout: float = 240) -> list[dict]:
    asyncio.run(asyncio.wait_for(AssignmentRun(agent, start)._run(), timeout))
    return [f for t, f in agent.sent if t == "assignment.finished"]


@pytest.fixture(scope="module")
def vibration_csv(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("data")
    subprocess.run([sys.executable, str(EXAMPLE / "make_data.py"), str(out), "--windows", "400"],
                   check=True, capture_output=True, cwd=ROOT)
    return (out / "vibration.csv").read_bytes()


@needs_bwrap
def test_a_bundle_trains_in_the_sandbox_and_its_model_goes_up(tmp_path, platform, vibration_csv):
    Platform.files["/data/"] = vibration_csv
    agent = an_agent(tmp_path, platform.server_port)
    # Only this run's cgroups: a killed run elsewhere on the machine may have left its own.
    before = set(Path("/sys/fs/cgroup/pids").glob("computemesh-*"))
    finished = run(agent, start_message((EXAMPLE / "task.py").read_bytes()))
    assert [f["status"] for f in finished] == ["succeeded"], agent.sent[-3:]
    assert finished[0]["metric"] == "accuracy" and finished[0]["data_deleted"] is True
    paths = [p for p, _ in Platform.received]
    assert "/up/artifact/" in paths and any(p.startswith("/up/checkpoints/") for p in paths)
    left = set(Path("/sys/fs/cgroup/pids").glob("computemesh-*")) - before
    assert not left, f"the cgroups were left behind: {left}"


@needs_bwrap
def test_a_zip_of_files_is_the_tasks_data_folder(tmp_path, platform, vibration_csv):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("vibration.csv", vibration_csv)
        z.writestr("README.txt", b"pump 3, March")
    Platform.files["/data/"] = archive.getvalue()
    agent = an_agent(tmp_path, platform.server_port)
    start = start_message((EXAMPLE / "task.py").read_bytes(), dataset={"kind": "zip"},
                          dataset_sha256=hashlib.sha256(archive.getvalue()).hexdigest())
    finished = run(agent, start)
    assert [f["status"] for f in finished] == ["succeeded"], agent.sent[-3:]
    assert finished[0]["metric"] == "accuracy"


HOSTILE = '''
import json, os
from workers.training.task import Task

class VibrationFaults(Task):
    def datasets(self):
        job = os.getcwd()
        agent = os.path.dirname(os.path.dirname(job))
        # A link to the agent's token (the path as the agent sees it, outside the sandbox),
        # and events that ask the agent to upload it as a checkpoint and as the model.
        os.symlink(os.path.join(agent, "token"), os.path.join(job, "leak.pt"))
        os.makedirs(os.path.join(job, "checkpoints"), exist_ok=True)
        os.symlink(agent, os.path.join(job, "checkpoints", "up"))
        with open(os.path.join(job, "events.jsonl"), "a") as fh:
            for path in (os.path.join(job, "leak.pt"), os.path.join(job, "checkpoints", "up", "token"),
                         os.path.join(agent, "token")):
                fh.write(json.dumps({"type": "checkpoint", "step": 1, "path": path,
                                     "sha256": "0" * 64, "bytes": 1}) + "\\n")
            fh.write(json.dumps({"type": "finished", "step": 1, "total_steps": 1, "metric": "accuracy",
                                 "value": 1.0, "artifact": os.path.join(job, "leak.pt"),
                                 "sha256": "0" * 64, "param_digests": []}) + "\\n")
        # And the pause file made a link, so that "pausing" would create a file of the agent's.
        os.symlink(os.path.join(agent, "created-by-job"), os.path.join(job, "pause"))
        import time
        time.sleep(3)
        raise RuntimeError("done")
'''


@needs_bwrap
def test_a_hostile_bundle_cannot_make_the_agent_upload_its_token(tmp_path, platform, vibration_csv):
    Platform.files["/data/"] = vibration_csv
    (tmp_path / "token").write_text(TOKEN)
    agent = an_agent(tmp_path, platform.server_port)
    start = start_message(HOSTILE.encode())

    async def go():
        run_ = AssignmentRun(agent, start)
        task = asyncio.create_task(run_._run())
        await asyncio.sleep(8)
        run_.pause()  # as the platform would when the budget runs out
        await asyncio.wait_for(task, 240)

    asyncio.run(go())
    finished = [f for t, f in agent.sent if t == "assignment.finished"]
    assert [f["status"] for f in finished] == ["failed"], agent.sent[-3:]
    assert all(TOKEN.encode() not in body for _, body in Platform.received)
    assert not (tmp_path / "created-by-job").exists()
    assert (tmp_path / "token").read_text() == TOKEN


def test_a_node_without_the_sandbox_refuses_consumers_code(tmp_path, platform):
    agent = an_agent(tmp_path, platform.server_port, available=False)
    finished = run(agent, start_message(b"X = 1\n"), timeout=60)
    assert [f["status"] for f in finished] == ["failed"]
    assert "cannot run consumers' code" in finished[0]["error"]
    assert [t for t, _ in agent.sent] == ["assignment.finished"]  # never accepted
