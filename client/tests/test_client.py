"""The client alone: no Django, no server. HTTP through httpx's MockTransport (the errors,
retries and idempotency rules), the job socket through a real local WebSocket server that
drops the connection mid-stream (resync), job files, the saved login and the command's
usage errors."""

import asyncio
import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import websockets
from computemesh_client import (
    AuthenticationError,
    Client,
    Conflict,
    NetworkError,
    NotFound,
    ServerError,
    ValidationError,
    config,
    jobfile,
    watch_job,
)
from computemesh_client.cli import main
from computemesh_client.errors import EXIT_NETWORK, EXIT_REFUSED, EXIT_USAGE
from websockets.asyncio.server import serve


def client_with(handler, **kwargs) -> tuple[Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return Client("http://cm.test", "tok", transport=httpx.MockTransport(record), backoff_s=0.001,
                  **kwargs), seen


def error(status: int, detail: str, field=None, code="invalid", **headers) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail, "field": field, "code": code}, headers=headers)


@pytest.mark.parametrize(("status", "body", "cls", "exit_code"), [
    (400, {"detail": "nodes: too small", "field": "nodes", "code": "min_value"}, ValidationError, EXIT_USAGE),
    (400, {"detail": "Unable to log in", "field": None, "code": "authorization"}, AuthenticationError,
     EXIT_REFUSED),
    (401, {"detail": "Invalid token.", "field": None, "code": "authentication_failed"}, AuthenticationError,
     EXIT_REFUSED),
    (404, {"detail": "Not found.", "field": None, "code": "not_found"}, NotFound, EXIT_REFUSED),
    (409, {"detail": "Job #3 is completed", "field": None, "code": "conflict"}, Conflict, EXIT_REFUSED),
    (500, {"detail": "Internal server error.", "field": None, "code": "server_error"}, ServerError,
     EXIT_NETWORK),
])
def test_errors_are_typed_and_carry_the_api_error_shape(status, body, cls, exit_code):
    c, _ = client_with(lambda r: httpx.Response(status, json=body))
    with pytest.raises(cls) as raised:
        c.job(3)
    exc = raised.value
    assert (exc.status_code, exc.detail, exc.field, exc.code) == (status, body["detail"], body["field"],
                                                                  body["code"])
    assert exc.exit_code == exit_code and (exc.method, exc.path) == ("GET", "/api/v1/jobs/3/")


def test_a_read_is_retried_after_503_and_retry_after_but_a_node_create_is_not():
    answers = iter([error(503, "chain down", code="unavailable"), error(429, "slow", **{"Retry-After": "0"}),
                    httpx.Response(200, json={"id": 3, "status": "running"})])
    c, seen = client_with(lambda r: next(answers))
    assert c.job(3)["status"] == "running" and len(seen) == 3

    c, seen = client_with(lambda r: error(503, "chain down", code="unavailable"))
    with pytest.raises(ServerError):
        c.node_create(name="x")
    assert len(seen) == 1  # POST /nodes/ has no idempotency key: never resent


def _timeout_then(status: int, body: dict):
    """A handler whose first answer is lost (the server may have acted on the request)."""
    def handler(request):
        if handler.n == 0:
            handler.n += 1
            raise httpx.ReadTimeout("timed out", request=request)
        handler.n += 1
        return httpx.Response(status, json=body)
    handler.n = 0
    return handler


def test_a_submit_resent_after_a_timeout_or_503_carries_its_first_idempotency_key():
    c, seen = client_with(_timeout_then(201, {"id": 9, "status": "submitted"}))
    assert c.submit({"name": "x"})["id"] == 9
    keys = [r.headers.get("Idempotency-Key") for r in seen]
    assert len(seen) == 2 and keys[0] and keys[0] == keys[1]
    assert json.loads(seen[0].content) == json.loads(seen[1].content) == {"name": "x"}

    answers = iter([error(503, "busy", code="unavailable"), httpx.Response(201, json={"id": 10})])
    c, seen = client_with(lambda r: next(answers))
    assert c.submit({"name": "x"})["id"] == 10
    assert len({r.headers["Idempotency-Key"] for r in seen}) == 1 and len(seen) == 2


def test_each_submit_call_has_its_own_key_and_a_given_key_is_sent():
    c, seen = client_with(lambda r: httpx.Response(201, json={"id": 1}))
    c.submit({"name": "x"})
    c.submit({"name": "x"})
    c.submit({"name": "x"}, idempotency_key="sweep-7-run-3")
    keys = [r.headers["Idempotency-Key"] for r in seen]
    assert keys[0] != keys[1] and keys[2] == "sweep-7-run-3"
    # Other writes send none.
    c.cancel(1)
    assert "Idempotency-Key" not in seen[-1].headers


def test_an_upload_resent_after_a_timeout_keeps_its_key_and_the_whole_file(tmp_path):
    csv = tmp_path / "vitals.csv"
    csv.write_text("label,a\n" + "1,2\n0,3\n" * 50)
    bodies = []

    def handler(request):
        bodies.append((request.headers.get("Idempotency-Key"), request.read()))
        if len(bodies) == 1:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(201, json={"id": 4, "name": "vitals", "rows": 100})

    c, _ = client_with(handler)
    assert c.upload_dataset(csv)["id"] == 4
    assert len(bodies) == 2 and bodies[0][0] and bodies[0][0] == bodies[1][0]
    assert all(csv.read_bytes() in body for _, body in bodies)


def test_a_reused_key_refused_with_422_is_a_validation_error():
    c, seen = client_with(lambda r: error(422, "This Idempotency-Key was used for a different request",
                                          field="Idempotency-Key", code="idempotency_key_reused"))
    with pytest.raises(ValidationError) as raised:
        c.submit({"name": "y"}, idempotency_key="k")
    assert raised.value.field == "Idempotency-Key" and raised.value.exit_code == EXIT_USAGE
    assert len(seen) == 1


def test_me_delete_dataset_and_my_offers_call_their_operations():
    me = {"username": "carol", "is_staff": False, "role": "owner",
          "organization": {"id": 3, "name": "Nordic GPU", "kind": "provider", "is_suspended": False}}
    answers = {("GET", "/api/v1/me/"): httpx.Response(200, json=me),
               ("DELETE", "/api/v1/datasets/5/"): httpx.Response(204),
               ("GET", "/api/v1/offers/mine/"): httpx.Response(200, json={
                   "count": 1, "next": None, "previous": None, "results": [{"id": 2, "status": "paused"}]})}
    c, seen = client_with(lambda r: answers[(r.method, r.url.path)])
    assert c.me() == me and c.check_token()
    assert c.delete_dataset(5) is None
    assert [o["status"] for o in c.iter_my_offers(region="EU")] == ["paused"]
    assert seen[-1].url.params["region"] == "EU"


def test_a_request_that_never_connected_is_resent_even_when_not_idempotent():
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(201, json={"id": 9, "name": "x"})

    c, _ = client_with(handler)
    assert c.node_create(name="x")["id"] == 9 and len(calls) == 3
    c, _ = client_with(lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)), retries=1)
    with pytest.raises(NetworkError, match="cannot reach http://cm.test"):
        c.templates()


def test_a_broken_connection_resends_only_idempotent_writes_and_stake_keeps_its_request_id():
    def broken_once():
        state = {"n": 0}

        def handler(request):
            state["n"] += 1
            if state["n"] == 1:
                raise httpx.ReadError("connection reset", request=request)
            return httpx.Response(202, json={"request_id": json.loads(request.content)["request_id"],
                                             "kind": "deposit", "amount": "5", "address": "0x",
                                             "tx_hash": "0xab", "tx_status": "sent"})
        return handler

    c, seen = client_with(broken_once())
    op = c.stake_deposit("5")
    ids = {json.loads(r.content)["request_id"] for r in seen}
    assert len(seen) == 2 and ids == {op["request_id"]}  # the same operation, sent twice

    c, seen = client_with(broken_once())
    with pytest.raises(NetworkError):
        c.node_create(name="x")
    assert len(seen) == 1


def test_an_upload_resent_after_a_refused_connection_sends_the_whole_file(tmp_path):
    csv = tmp_path / "vitals.csv"
    csv.write_text("label,a\n" + "1,2\n0,3\n" * 50)
    bodies = []

    def handler(request):
        bodies.append(request.read())  # the first try read the file before it failed
        if len(bodies) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(201, json={"id": 4, "name": "vitals", "rows": 100})

    c, _ = client_with(handler)
    assert c.upload_dataset(csv, label_column="label")["id"] == 4
    assert len(bodies) == 2 and all(csv.read_bytes() in body for body in bodies)


def test_requests_carry_the_token_filters_and_ids_safely():
    c, seen = client_with(lambda r: httpx.Response(200, json={"count": 0, "next": None, "previous": None,
                                                               "results": []}))
    c.offers(gpu_model=["A100 80GB", "cpu"], region=["EU"], online=True, max_price="1.5", min_gpus=None)
    request = seen[-1]
    assert request.headers["Authorization"] == "Token tok"
    assert request.url.params.get_list("gpu_model") == ["A100 80GB", "cpu"]
    assert request.url.params["online"] == "true" and "min_gpus" not in request.url.params
    c, seen = client_with(lambda r: httpx.Response(200, json={}))
    c.template("../../admin")
    assert seen[-1].url.raw_path == b"/api/v1/templates/..%2F..%2Fadmin/"


def test_download_streams_to_a_folder_under_the_servers_file_name(tmp_path):
    model = os.urandom(200_000)
    c, _ = client_with(lambda r: httpx.Response(200, content=model, headers={
        "Content-Disposition": 'attachment; filename="../computemesh-job-7-model.pt"'}))
    path = c.download_model(7, tmp_path)
    assert path == tmp_path / "computemesh-job-7-model.pt" and path.read_bytes() == model
    assert not list(tmp_path.glob("*.part"))


def test_the_partial_result_is_downloaded_from_the_checkpoint_operation(tmp_path):
    weights = os.urandom(50_000)
    c, seen = client_with(lambda r: httpx.Response(200, content=weights, headers={
        "Content-Disposition": 'attachment; filename="computemesh-job-7-step-2600.pt"'}))
    path = c.download_checkpoint(7, tmp_path)
    assert seen[-1].url.path == "/api/v1/jobs/7/checkpoint/"
    assert path == tmp_path / "computemesh-job-7-step-2600.pt" and path.read_bytes() == weights


# --- the job socket ---------------------------------------------------------------------

def point(seq):
    return {"seq": seq, "step": seq, "total_steps": 6, "loss": 1.0 / seq, "at": "2026-01-01T00:00:00Z"}


def snapshot(status):
    return {"id": 5, "status": status, "progress": None, "cost_so_far": "0"}


class FakeJobSocket:
    """The server's side of /ws/jobs/5/: history from `stored` after the resync's seq, live
    points before the history answers (they must be held back), a drop after the first
    connection's points, the end on the second."""

    def __init__(self):
        self.resyncs: list[dict] = []
        self.headers: list = []
        self.connections = 0

    async def handler(self, ws):
        self.connections += 1
        self.headers.append((ws.request.headers.get("Authorization"), ws.request.headers.get("Origin")))
        resync = json.loads(await ws.recv())
        self.resyncs.append(resync)
        after = resync["after_seq"]
        if self.connections == 1:
            await ws.send(json.dumps({"type": "metrics", "points": [point(3)]}))  # live, before history
            await ws.send(json.dumps({"type": "history", "metrics": [point(1), point(2), point(3)],
                                      "logs": [{"seq": 1, "line": "epoch 1", "at": None}],
                                      "job": snapshot("running")}))
            await ws.send(json.dumps({"type": "metrics", "points": [point(3), point(4)]}))  # 3 again
            await ws.close()  # the connection drops; 5 is stored meanwhile
            return
        stored = [point(i) for i in range(1, 7)]
        await ws.send(json.dumps({"type": "history", "metrics": [p for p in stored if p["seq"] > after],
                                  "logs": [], "job": snapshot("running")}))
        await ws.send(json.dumps({"type": "job", "job": snapshot("completed")}))
        await asyncio.wait_for(ws.wait_closed(), 5)  # the watcher stops on its own and closes


def test_the_watch_resyncs_after_a_drop_and_yields_each_point_once_in_order():
    server = FakeJobSocket()

    async def scenario():
        async with serve(server.handler, "127.0.0.1", 0) as ws_server:
            port = ws_server.sockets[0].getsockname()[1]
            return [e async for e in watch_job(f"http://127.0.0.1:{port}", "tok", 5)]

    events = asyncio.run(scenario())
    assert [e.data["seq"] for e in events if e.type == "metric"] == [1, 2, 3, 4, 5, 6]
    assert [e.data["line"] for e in events if e.type == "log"] == ["epoch 1"]
    assert [e.type for e in events].count("reconnected") == 1
    assert events[-1].type == "job" and events[-1].data["status"] == "completed"
    assert server.resyncs == [{"type": "resync", "after_seq": 0, "after_log_seq": 0},
                              {"type": "resync", "after_seq": 4, "after_log_seq": 1}]
    assert server.headers[0][0] == "Token tok" and server.headers[0][1].startswith("http://127.0.0.1:")


def test_the_blocking_watch_is_the_same_stream_and_a_refused_socket_is_not_found():
    server = FakeJobSocket()
    ready, box = threading.Event(), {}

    async def run_server():
        async def refuse(connection, request):
            if request.path != "/ws/jobs/5/":
                return connection.respond(403, "refused")
            return None

        async with serve(server.handler, "127.0.0.1", 0, process_request=refuse) as ws_server:
            box["port"] = ws_server.sockets[0].getsockname()[1]
            box["stop"] = asyncio.get_running_loop().create_future()
            ready.set()
            await box["stop"]

    thread = threading.Thread(target=asyncio.run, args=(run_server(),), daemon=True)
    thread.start()
    ready.wait(10)
    c = Client(f"http://127.0.0.1:{box['port']}", "tok")
    events = list(c.watch(5))
    assert [e.data["seq"] for e in events if e.type == "metric"] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(NotFound, match="not yours"):
        list(c.watch(6))
    assert isinstance(websockets.__version__, str)


# --- job files, the saved login, the command -------------------------------------------

def test_job_files_in_yaml_and_toml_mean_the_same(tmp_path):
    (tmp_path / "job.yaml").write_text(
        "name: Sepsis\ntemplate: tabular-classifier\ndata: vitals.csv\nregion: EU\n"
        "price_ceiling: 1.5\nbudget: 10\ndeadline: 12h\nparams: {epochs: 3}\n")
    (tmp_path / "job.toml").write_text(
        'name = "Sepsis"\ntemplate = "tabular-classifier"\ndata = "vitals.csv"\nregions = ["EU"]\n'
        'max_price_per_gpu_hour = "1.5"\nbudget = 10\ndeadline = "12h"\n[params]\nepochs = 3\n')
    a, b = jobfile.read(tmp_path / "job.yaml"), jobfile.read(tmp_path / "job.toml")
    deadline_a, deadline_b = a.pop("deadline"), b.pop("deadline")
    assert a == b == {"name": "Sepsis", "template": "tabular-classifier",
                      "data": str(tmp_path / "vitals.csv"), "regions": ["EU"],
                      "max_price_per_gpu_hour": "1.5", "budget": "10", "params": {"epochs": 3}}
    for value in (deadline_a, deadline_b):
        left = datetime.fromisoformat(value) - datetime.now(UTC)
        assert timedelta(hours=11, minutes=59) < left <= timedelta(hours=12)
    assert "data" not in jobfile.spec_of(a) and "deadline" in jobfile.spec_of(a)
    assert jobfile.normalize({"sync": "diloco"}) == {"sync": {"mode": "diloco"}}
    (tmp_path / "bad.yaml").write_text("name: x\nregoins: [EU]\n")
    with pytest.raises(jobfile.JobFileError, match="unknown job field 'regoins'"):
        jobfile.read(tmp_path / "bad.yaml")
    with pytest.raises(jobfile.JobFileError, match="deadline 'tomorrow'"):
        jobfile.deadline("tomorrow")


def test_the_login_is_saved_0600_and_the_environment_overrides_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("COMPUTEMESH_URL", "COMPUTEMESH_TOKEN", "COMPUTEMESH_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    path = config.save(url="http://cm.test/", token="abc", username="alice")
    assert path == tmp_path / "computemesh" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    s = config.load()
    assert (s.url, s.token, s.username) == ("http://cm.test", "abc", "alice")
    monkeypatch.setenv("COMPUTEMESH_URL", "http://other.test")
    assert config.load().token is None  # the saved token is for another server
    monkeypatch.setenv("COMPUTEMESH_TOKEN", "xyz")
    assert (config.load().url, config.load().token) == ("http://other.test", "xyz")


@pytest.mark.parametrize("argv", [["jobs", "show", "abc"], ["jobs", "nope"],
                                  ["offers", "--sort", "colour"], ["submit", "--param", "epochs"]])
def test_usage_errors_exit_2_with_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("COMPUTEMESH_TOKEN", "tok")
    with pytest.raises(SystemExit) as ended:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert ended.value.code == EXIT_USAGE and len(err) == 1 and err[0].startswith("error: "), err


def test_not_logged_in_is_exit_3_and_completion_scripts_print(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("COMPUTEMESH_TOKEN", raising=False)
    with pytest.raises(SystemExit) as ended:
        main(["jobs", "list"])
    assert ended.value.code == EXIT_REFUSED and "Not logged in" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ended:
        main(["completion", "bash"])
    assert ended.value.code == 0 and "_COMPUTEMESH_COMPLETE" in capsys.readouterr().out


def test_a_resumable_upload_goes_on_at_the_servers_offset_after_breaks(tmp_path):
    """The server keeps what arrived whole; after a dropped connection or a 409 at a stale
    offset the client asks for the offset (HEAD) and sends from there, never from 0."""
    data = os.urandom(10_000)
    path = tmp_path / "scans.zip"
    path.write_bytes(data)
    held = bytearray()
    patches: list[int] = []
    state = {"drops": 0}

    def server(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/api/v1/uploads/":
            return httpx.Response(200, json=[])
        if request.method == "POST" and request.url.path == "/api/v1/uploads/":
            body = json.loads(request.content)
            assert body["size_bytes"] == len(data) and body["purpose"] == "dataset"
            return httpx.Response(201, json={"id": "u1", "offset": 0, "chunk_max_bytes": 3000,
                                             "size_bytes": len(data)})
        if request.method == "HEAD":
            return httpx.Response(200, headers={"Upload-Offset": str(len(held))})
        if request.method == "PATCH":
            offset = int(request.headers["Upload-Offset"])
            patches.append(offset)
            if offset != len(held):
                return error(409, "stale", code="offset_mismatch")
            if offset == 3000 and state["drops"] == 0:  # kept, but the answer is lost
                held.extend(request.content)
                state["drops"] += 1
                raise httpx.ReadError("connection reset")
            held.extend(request.content)
            return httpx.Response(204, headers={"Upload-Offset": str(len(held))})
        if request.url.path.endswith("/finish/"):
            assert bytes(held) == data
            return httpx.Response(201, json={"id": 7, "kind": "zip"})
        raise AssertionError(request)

    c, _ = client_with(server)
    seen: list[tuple[int, int]] = []
    assert c.upload_dataset_resumable(path, chunk_size=4000,
                                      progress=lambda a, b: seen.append((a, b)))["id"] == 7
    # 0, 3000 (answer lost: the server had it), then from the server's 6000, never 3000 again.
    assert patches == [0, 3000, 6000, 9000]
    assert seen[0] == (0, 10_000) and seen[-1] == (10_000, 10_000)


def test_a_job_file_takes_a_bundle_in_place_of_a_template(tmp_path):
    (tmp_path / "task.zip").write_bytes(b"PK")
    job = tmp_path / "job.yaml"
    job.write_text("name: mine\nbundle: ./task.zip\nnodes: 1\n")
    fields = jobfile.read(job)
    assert fields["bundle"] == str(tmp_path / "task.zip")  # relative to the job file
    assert jobfile.normalize({"bundle": "12"}) == {"bundle": 12}
    assert jobfile.spec_of({"bundle": 12, "name": "x"})["bundle"] == 12
    from computemesh_client.cli import build_spec

    assert build_spec(str(job), {})["bundle"] == str(tmp_path / "task.zip")
    with pytest.raises(Exception, match="missing template"):
        build_spec(None, {"name": "x"})
    job.write_text("name: both\nbundle: 3\ntemplate: tabular-classifier\n")
    with pytest.raises(Exception, match="not both"):
        build_spec(str(job), {})


def test_weights_are_an_id_or_a_local_state_dict_to_upload(tmp_path):
    (tmp_path / "pretrained.pt").write_bytes(b"PK")
    job = tmp_path / "job.yaml"
    job.write_text("name: ft\nbundle: 3\nweights: ./pretrained.pt\nnodes: 1\n")
    from computemesh_client.cli import build_spec

    assert build_spec(str(job), {})["weights"] == str(tmp_path / "pretrained.pt")
    assert build_spec(str(job), {"weights": "41"})["weights"] == 41  # the option wins
    assert jobfile.spec_of({"weights": 41, "name": "x"})["weights"] == 41
    c, _ = client_with(lambda request: httpx.Response(500))
    with pytest.raises(ValueError, match="a .pt or .pth state_dict"):
        c.upload_weights(tmp_path / "job.yaml")


def test_finish_is_asked_again_while_the_first_still_runs(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"a,b\n1,2\n")
    finishes: list[int] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=[{"id": "u9", "purpose": "dataset", "name": "data.csv",
                                              "size_bytes": 8, "sha256": jobfile_sha(path),
                                              "offset": 8, "chunk_max_bytes": 64}])
        if request.url.path.endswith("/finish/"):
            finishes.append(1)
            if len(finishes) == 1:
                raise httpx.ReadTimeout("the server is still checking")
            if len(finishes) == 2:
                return error(409, "Another request is writing to this upload.", code="upload_busy")
            return httpx.Response(200, json={"id": 5})
        raise AssertionError(request)

    c, seen = client_with(server)
    assert c.upload_dataset_resumable(path)["id"] == 5
    assert len(finishes) == 3 and not any(r.method == "PATCH" for r in seen)  # all was there


def jobfile_sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
