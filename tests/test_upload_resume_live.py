"""Resumable uploads against the live ASGI server (daphne, the test database): a chunk cut
off mid-body is not kept and the upload resumes at the server's offset; the command line,
killed mid-upload, resumes the same upload where the server stopped when run again (issues
16 and 17)."""

import hashlib
import os
import signal
import socket
import subprocess
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from computemesh_client import Client
from rest_framework.authtoken.models import Token

from marketplace.models import Dataset, Upload
from marketplace.services.datasets import dataset_chunks

from .browser_support import ROOT
from .live_server import daphne
from .platform_logs import LogFile, watch
from .test_client_cli import COMMAND

live = pytest.mark.django_db(transaction=True)
CHUNK = "application/offset+octet-stream"


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    with daphne() as (base, _pid):
        yield base


@pytest.fixture
def base(server):
    watch(LogFile(ROOT / "test-results" / "live-api" / f"daphne-{server.rsplit(':', 1)[1]}.log"))
    return server


def random_zip(path: Path, megabytes: int) -> bytes:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for i in range(megabytes):
            z.writestr(f"class{i % 3}/{i}.bin", os.urandom(1_048_576))
    return path.read_bytes()


def cut_off_patch(base: str, token: str, upload_id: str, offset: int, declared: int,
                  sent: bytes) -> None:
    """A PATCH whose connection drops after `sent`, short of the `declared` length."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port)) as sock:
        head = (f"PATCH /api/v1/uploads/{upload_id}/ HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: Token {token}\r\nContent-Type: {CHUNK}\r\n"
                f"Upload-Offset: {offset}\r\nContent-Length: {declared}\r\n\r\n")
        sock.sendall(head.encode() + sent)


@live
def test_a_cut_off_chunk_is_not_kept_and_the_upload_resumes(base, alice, tmp_path):
    token = Token.objects.create(user=alice).key
    content = random_zip(tmp_path / "scans.zip", 3)
    auth = {"Authorization": f"Token {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=30) as http:
        created = http.post("/api/v1/uploads/", json={
            "purpose": "dataset", "name": "scans.zip", "size_bytes": len(content),
            "sha256": hashlib.sha256(content).hexdigest()})
        assert created.status_code == 201, created.text
        uid = created.json()["id"]
        first = http.patch(f"/api/v1/uploads/{uid}/", content=content[:1_000_000],
                           headers={"Upload-Offset": "0", "Content-Type": CHUNK})
        assert first.status_code == 204 and first.headers["Upload-Offset"] == "1000000"
        # The connection drops 300 kB into a 2 MB chunk.
        cut_off_patch(base, token, uid, 1_000_000, 2_000_000, content[1_000_000:1_300_000])
        time.sleep(0.5)
        head = http.head(f"/api/v1/uploads/{uid}/")
        assert head.status_code == 200 and head.headers["Upload-Offset"] == "1000000"
        # Resent from the server's offset: the rest, then finish.
        rest = http.patch(f"/api/v1/uploads/{uid}/", content=content[1_000_000:],
                          headers={"Upload-Offset": head.headers["Upload-Offset"],
                                   "Content-Type": CHUNK})
        assert rest.status_code == 204, rest.text
        finished = http.post(f"/api/v1/uploads/{uid}/finish/")
        assert finished.status_code == 201, finished.text
    dataset = Dataset.objects.get(pk=finished.json()["id"])
    assert b"".join(dataset_chunks(dataset)) == content
    assert dataset.kind == "zip" and dataset.entries == 3


@live
def test_the_command_line_killed_mid_upload_resumes_where_the_server_stopped(base, alice, tmp_path):
    token = Token.objects.create(user=alice).key
    content = random_zip(tmp_path / "xrays.zip", 48)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("COMPUTEMESH_")},
           "COMPUTEMESH_URL": base, "COMPUTEMESH_TOKEN": token, "XDG_CONFIG_HOME": str(tmp_path)}
    args = [COMMAND, "datasets", "upload", str(tmp_path / "xrays.zip"), "--chunk-mb", "1", "--json"]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    upload = None
    while time.monotonic() < deadline:
        upload = Upload.objects.filter(owner__memberships__user=alice).first()
        if upload is not None and upload.offset >= 4 * 1_048_576:
            break
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    assert upload is not None
    upload.refresh_from_db()
    stopped = upload.offset
    assert 0 < stopped < len(content), "the first run must be killed mid-upload"
    # Run again: the same upload, from the server's offset, not from the start.
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    upload.refresh_from_db()
    assert upload.status == Upload.Status.COMPLETE and Upload.objects.count() == 1
    dataset = Dataset.objects.get(pk=upload.result_id)
    assert dataset.sha256 == hashlib.sha256(content).hexdigest()
    assert b"".join(dataset_chunks(dataset)) == content
    with Client(base, token) as c:  # nothing unfinished is left
        assert c.uploads() == []


@live
def test_two_patches_at_the_same_offset_at_once_one_is_refused(base, alice, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    token = Token.objects.create(user=alice).key
    content = random_zip(tmp_path / "pair.zip", 8)
    auth = {"Authorization": f"Token {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=60) as http:
        uid = http.post("/api/v1/uploads/", json={
            "purpose": "dataset", "name": "pair.zip", "size_bytes": len(content),
            "sha256": hashlib.sha256(content).hexdigest()}).json()["id"]

    def send(_):
        with httpx.Client(base_url=base, headers=auth, timeout=60) as h:
            return h.patch(f"/api/v1/uploads/{uid}/", content=content[:4_000_000],
                           headers={"Upload-Offset": "0", "Content-Type": CHUNK})

    with ThreadPoolExecutor(2) as pool:
        answers = sorted(r.status_code for r in pool.map(send, range(2)))
    assert answers == [204, 409], answers
    upload = Upload.objects.get(pk=uid)
    assert upload.offset == 4_000_000  # the chunk once, not twice


@live
def test_submit_a_job_file_with_a_local_bundle_in_place_of_a_template(base, alice, tmp_path):
    from marketplace.models import CodeBundle, Job

    from .test_api_bundles import RUNTIME

    token = Token.objects.create(user=alice).key
    (tmp_path / "task.py").write_text("class Forecaster:\n    pass\n")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "name: My forecaster\nbundle: ./task.py\nparams: {}\nnodes: 1\ngpus_per_node: 1\n"
        "gpu_models: [cpu]\nmax_price: 1.00\nbudget: 5\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("COMPUTEMESH_")},
           "COMPUTEMESH_URL": base, "COMPUTEMESH_TOKEN": token, "XDG_CONFIG_HOME": str(tmp_path)}
    # A single .py file names its class with --entry at upload; a job file's local bundle is
    # uploaded as it is, so upload it first here, then submit by id and by path (the same).
    up = subprocess.run([COMMAND, "bundles", "upload", str(tmp_path / "task.py"), "--entry",
                         "Forecaster", "--json"], env=env, capture_output=True, text=True,
                        timeout=60, check=False)
    assert up.returncode == 0, up.stderr
    bundle = CodeBundle.objects.get()
    assert bundle.entry == "task:Forecaster" and bundle.runtime == RUNTIME
    done = subprocess.run([COMMAND, "submit", str(job_file), "--json", "--no-fund"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    job = Job.objects.get()
    assert job.bundle_id == bundle.pk and job.template == ""  # the same bytes: the same bundle
    listed = subprocess.run([COMMAND, "bundles", "list", "--json"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert listed.returncode == 0 and f'"id": {bundle.pk}' in listed.stdout
    refused = subprocess.run([COMMAND, "bundles", "delete", str(bundle.pk)], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 3 and "not finished" in refused.stderr
