"""Issue 13 item 7, the provider's side: a job's data, checkpoints and code leave the node
when its assignment ends, the agent says so in `assignment.finished` (`data_deleted`), and
only the newest `keep_checkpoints` checkpoints stay on disk while it runs.

The assignment runs for real (the agent's AssignmentRun, torch.distributed.run, gloo) and
uploads over real HTTP to a small stand-in for the platform's upload endpoints."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.urls import reverse

from workers.agent.run_assignment import AssignmentRun, prune_checkpoints


class Uploads(BaseHTTPRequestHandler):
    received: list[tuple[str, int]] = []

    def do_PUT(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, len(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def do_GET(self):  # noqa: N802
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def an_agent(workdir: Path, port: int) -> SimpleNamespace:
    sent: list[tuple[str, dict]] = []

    async def send_data(assignment, type_, **fields):
        sent.append((type_, fields))

    quiet = lambda *a, **k: None  # noqa: E731
    return SimpleNamespace(
        workdir=workdir, stall_timeout_s=120, send_data=send_data, sent=sent, cpu_threads=1,
        faults=SimpleNamespace(vanish=0, withhold_checkpoints=0), advertise_addr="127.0.0.1",
        url=lambda path: f"http://127.0.0.1:{port}{path}", forget=quiet,
        display=SimpleNamespace(log=quiet, assignment_started=quiet, assignment_progress=quiet,
                                assignment_done=quiet))


def serve():
    Uploads.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Uploads)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_message(**extra) -> dict:
    return {"assignment": 41, "job": 9, "node_rank": 0, "nnodes": 1, "nproc_per_node": 1,
            "template": "tabular-classifier", "token": "t", "upload_url": "/up/",
            "params": {"epochs": 2, "batch_size": 16, "learning_rate": 0.003, "hidden_units": 16,
                       "hidden_layers": 1, "dropout": 0.0, "checkpoint_every": 8, "seed": 0},
            "dataset": {"kind": "sample", "name": "breast-cancer"}, **extra}


def test_the_job_files_are_deleted_after_a_real_run_and_the_agent_says_so(tmp_path):
    server = serve()
    try:
        agent = an_agent(tmp_path, server.server_port)
        run = AssignmentRun(agent, start_message(keep_checkpoints=2))
        asyncio.run(asyncio.wait_for(run._run(), 240))
    finally:
        server.shutdown()
    finished = [f for t, f in agent.sent if t == "assignment.finished"]
    assert [f["status"] for f in finished] == ["succeeded"], agent.sent[-3:]
    assert finished[0]["data_deleted"] is True
    job_dir = tmp_path / "assignments" / "41"
    assert not job_dir.exists()  # spec, events, checkpoints, model: all gone from the node
    # What the platform needed went up first: the final model and the checkpoints.
    paths = [p for p, _ in Uploads.received]
    assert "/up/artifact/" in paths
    assert sum(p.startswith("/up/checkpoints/") for p in paths) >= 1


def test_a_failed_assignment_leaves_nothing_behind_either(tmp_path):
    server = serve()  # answers 404 to the dataset download: the assignment fails
    try:
        agent = an_agent(tmp_path, server.server_port)
        run = AssignmentRun(agent, start_message(dataset={"kind": "csv"}, dataset_url="/data/"))
        asyncio.run(asyncio.wait_for(run._run(), 30))
    finally:
        server.shutdown()
    (finished,) = [f for t, f in agent.sent if t == "assignment.finished"]
    assert finished["status"] == "failed" and finished["data_deleted"] is True
    assert not (tmp_path / "assignments" / "41").exists()


def test_only_the_newest_uploaded_checkpoints_are_kept(tmp_path):
    for step in (10, 20, 30, 40, 5, 50):
        (tmp_path / f"step-{step:07d}.pt").write_bytes(b"x")
    gone = prune_checkpoints(tmp_path, up_to_step=40, keep=3)
    assert sorted(p.name for p in gone) == ["step-0000005.pt", "step-0000010.pt"]
    # 50 is not uploaded yet: it stays whatever the count.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-0000020.pt", "step-0000030.pt", "step-0000040.pt", "step-0000050.pt"]


@pytest.mark.django_db(transaction=True)
def test_the_platform_records_the_deletion_and_the_job_page_says_so(client):
    # Through the ASGI agent socket: the agent reports data_deleted with its part's end.
    from marketplace.models import Assignment

    from .factories import UserFactory
    from .test_agent_socket import _assignment, _session, run, token_node

    a = _assignment(token_node())
    run(_session("cmn_socket_test", [
        {"type": "assignment.accepted", "id": "1", "assignment": a.pk, "seq": 1,
         "rdzv": {"host": "127.0.0.1", "port": 29500}},
        {"type": "assignment.finished", "id": "2", "assignment": a.pk, "seq": 2, "status": "failed",
         "error": "boom", "data_deleted": True},
    ]))
    a.refresh_from_db()
    assert a.status == Assignment.Status.FAILED
    event = a.job.events.get(reason="data_deleted")
    assert event.message.startswith(f"Data deleted from node {a.node_id}")
    client.force_login(UserFactory(organization=a.job.owner))
    page = client.get(reverse("job_detail", args=[a.job_id])).content.decode()
    assert f"Data deleted from node {a.node_id}" in page
