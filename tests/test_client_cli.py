"""The consumers' client and the `computemesh` command (client/, issue 17) against the live
ASGI server (daphne on the test database): every error class exits with its documented
code and a one-line message; the client's operations exist in the OpenAPI document (so the
two cannot drift apart); the client drives offers, quotes, datasets, jobs, the job socket
and a provider's nodes and offers; and the client's own tests pass in a fresh virtual
environment that holds only what the client declares (no Django, no torch)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from computemesh_client import OPERATIONS, Client, Conflict, NotFound, ValidationError, job_succeeded
from rest_framework.authtoken.models import Token

from marketplace.models import Assignment, LogLine

from .browser_support import ROOT, free_port
from .factories import JobFactory, NodeFactory, OfferFactory
from .live_server import daphne
from .platform_logs import LogFile, watch
from .venvs import declared, linked_venv

# Tests that start or use the live server need committed rows (daphne is another process).
live = pytest.mark.django_db(transaction=True)

COMMAND = str(Path(sys.executable).with_name("computemesh"))
PASSWORD = "s3cret-pass-123"
# Operations of the OpenAPI document the client deliberately leaves out: PUT (it PATCHes),
# staff-only suspension, wallet linking, which a browser wallet signs (SIWE), and the agent's
# registration with a one-time code.
NOT_IN_CLIENT = {
    ("PUT", "/api/v1/nodes/{id}/"), ("PUT", "/api/v1/offers/{id}/"),
    ("POST", "/api/v1/organizations/{id}/suspend/"), ("POST", "/api/v1/organizations/{id}/unsuspend/"),
    ("GET", "/api/v1/wallets/siwe-nonce/"), ("POST", "/api/v1/wallets/link/"),
    ("POST", "/api/v1/node-registrations/"),  # the provider's agent calls it (computemesh-agent register)
}


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    with daphne() as (base, _pid):
        yield base


@pytest.fixture
def base(server):
    # The module's one daphne: each test reads its log at teardown (platform_logs).
    watch(LogFile(ROOT / "test-results" / "live-api" / f"daphne-{server.rsplit(':', 1)[1]}.log"))
    return server


def cm(*args: str, url: str, token: str | None = None, config: Path, timeout: float = 60,
       **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COMPUTEMESH_")}
    environment.update({"COMPUTEMESH_URL": url, "XDG_CONFIG_HOME": str(config), "COLUMNS": "200",
                        **({"COMPUTEMESH_TOKEN": token} if token else {}), **env})
    return subprocess.run([COMMAND, *args], capture_output=True, text=True, env=environment,
                          timeout=timeout, check=False)


def one_line_error(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def set_password(user):
    user.set_password(PASSWORD)
    user.save()
    return user


def test_every_client_operation_is_in_the_openapi_document_and_the_reverse(client):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    documented = {(method.upper(), path) for path, ops in schema["paths"].items()
                  for method in ops if method in ("get", "post", "put", "patch", "delete")}
    used = {(method, path) for method, path, _ in OPERATIONS.values()}
    assert used - documented == set(), "the client calls operations the API does not have"
    assert documented - used - NOT_IN_CLIENT == set(), "API operations the client lacks"
    assert NOT_IN_CLIENT <= documented  # the exclusions are still real operations


@live
def test_login_wrong_password_whoami_and_the_saved_token(base, alice, tmp_path):
    set_password(alice)
    wrong = cm("login", "-u", "alice", "-p", "not-the-password", url=base, config=tmp_path)
    assert "Unable to log in" in one_line_error(wrong, 3)
    assert not (tmp_path / "computemesh" / "config.toml").exists()

    ok = cm("login", "-u", "alice", "-p", PASSWORD, url=base, config=tmp_path)
    assert ok.returncode == 0, ok.stderr
    saved = tmp_path / "computemesh" / "config.toml"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert Token.objects.get(user=alice).key in saved.read_text()

    who = cm("whoami", "--json", url=base, config=tmp_path)
    assert who.returncode == 0, who.stderr
    # From the server (GET /me/), not the name saved at login.
    assert {k: v for k, v in json.loads(who.stdout).items() if k in ("username", "role")} == {
        "username": "alice", "role": "owner"}
    assert json.loads(who.stdout)["organization"]["name"] == "Medisight"
    # COMPUTEMESH_TOKEN overrides the saved login; a token the server refuses is exit 3.
    bad = cm("whoami", url=base, config=tmp_path, token="0" * 40)
    assert "refuses the token from COMPUTEMESH_TOKEN" in one_line_error(bad, 3)


@live
def test_another_tenants_job_is_refused_with_exit_3_on_the_api_and_the_socket(base, alice, bob, energy,
                                                                               tmp_path):
    job = JobFactory(owner=energy, status="running")
    token = Token.objects.create(user=alice).key
    shown = one_line_error(cm("jobs", "show", str(job.pk), url=base, token=token, config=tmp_path), 3)
    assert f"/api/v1/jobs/{job.pk}/" in shown and "404" in shown
    watched = one_line_error(cm("jobs", "watch", str(job.pk), url=base, token=token, config=tmp_path), 3)
    assert "not yours" in watched
    with Client(base, token) as c, pytest.raises(NotFound) as refused:
        c.cancel(job.pk)
    assert refused.value.status_code == 404 and refused.value.code == "not_found"


@live
def test_jobs_download_partial_saves_the_trusted_checkpoint_and_refuses_another_tenant(
        base, alice, bob, healthcare, carol_offer, tmp_path):
    import hashlib
    from decimal import Decimal

    from django.core.files.base import ContentFile
    from django.utils import timezone

    from marketplace.models import Assignment, Checkpoint

    job = JobFactory(owner=healthcare, status="cancelled")
    a = Assignment.objects.create(job=job, node=carol_offer.node, offer=carol_offer, attempt=1, node_rank=0,
                                  gpus=1, price_per_gpu_hour=Decimal("1"), status="cancelled")
    weights = os.urandom(30_000)
    ckpt = Checkpoint(job=job, assignment=a, step=2600, sha256=hashlib.sha256(weights).hexdigest(),
                      size_bytes=len(weights), committed_at=timezone.now(), status="verified")
    ckpt.file.save("ckpt.pt", ContentFile(weights), save=True)
    token = Token.objects.create(user=alice).key
    saved = cm("jobs", "download", str(job.pk), "--partial", "-o", str(tmp_path / "out") + "/", "--json",
               url=base, token=token, config=tmp_path)
    assert saved.returncode == 0, saved.stderr
    path = Path(json.loads(saved.stdout)["path"])
    assert path.name == f"computemesh-job-{job.pk}-step-2600.pt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ckpt.sha256
    shown = cm("jobs", "show", str(job.pk), url=base, token=token, config=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert (f"the checkpoint at step 2600 (30,000 bytes): computemesh jobs download {job.pk} --partial"
            in shown.stdout)
    other = Token.objects.create(user=bob).key
    refused = cm("jobs", "download", str(job.pk), "--partial", "-o", str(tmp_path / "bob") + "/",
                 url=base, token=other, config=tmp_path)
    assert "404" in one_line_error(refused, 3)
    assert not list((tmp_path / "bob").glob("*.pt"))


@live
def test_account_faucet_and_disputes_from_the_command_line(base, alice, healthcare, energy, tmp_path):
    token = Token.objects.create(user=alice).key
    account = cm("account", "--json", url=base, token=token, config=tmp_path)
    assert account.returncode == 0, account.stderr
    body = json.loads(account.stdout)
    assert {"available", "escrowed", "spent", "refunded", "earned", "movements"} <= body.keys()
    assert body["spent"] == "0.000000" and body["movements"] == []
    # Payments are off on this test server: the faucet refuses with a reason, exit 3.
    refused = one_line_error(cm("account", "faucet", url=base, token=token, config=tmp_path), 3)
    assert "Payments are off" in refused

    running = JobFactory(owner=healthcare, status="running")
    too_soon = one_line_error(cm("jobs", "dispute", str(running.pk), "the loss never went down at all",
                                 url=base, token=token, config=tmp_path), 3)
    assert "only a completed job" in too_soon
    listed = cm("jobs", "dispute", str(running.pk), "--json", url=base, token=token, config=tmp_path)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    # Statements as files: none before settlement (exit 3); a month given badly is a usage error.
    unsettled = one_line_error(cm("jobs", "statement", str(running.pk), "--csv", "-o", str(tmp_path),
                                  url=base, token=token, config=tmp_path), 3)
    assert "404" in unsettled and not list(tmp_path.glob("*.csv"))
    assert "YYYY-MM" in one_line_error(cm("account", "statement", "december", url=base, token=token,
                                          config=tmp_path), 2)
    month = cm("account", "statement", "2026-12", "-o", str(tmp_path / "dec.csv"), "--json", url=base,
               token=token, config=tmp_path)
    assert month.returncode == 0, month.stderr
    # No movement that month: the header alone.
    assert (tmp_path / "dec.csv").read_text().splitlines() == [
        "date_utc,type,description,job_id,job_name,amount_tusd,available_change_tusd,"
        "escrow_change_tusd,status,transaction"]
    # Another organization's job: not found, nothing opened.
    theirs = JobFactory(owner=energy, status="completed")
    not_yours = one_line_error(cm("jobs", "dispute", str(theirs.pk), "the loss never went down at all",
                                  url=base, token=token, config=tmp_path), 3)
    assert "404" in not_yours or "403" in not_yours


@live
def test_jobs_logs_shows_each_ranks_lines_filters_them_and_refuses_another_tenant(base, alice, healthcare,
                                                                                   energy, tmp_path):
    job = JobFactory(owner=healthcare, status="running")
    node = NodeFactory()
    offer = OfferFactory(node=node)
    a = Assignment.objects.create(job=job, node=node, offer=offer, attempt=1, node_rank=0, gpus=2,
                                  price_per_gpu_hour=offer.price_per_gpu_hour, status="running")
    for seq, (rank, line) in enumerate([(None, "torchrun starts"), (0, "runtime: rank 0 in <job>"),
                                        (1, "runtime: rank 1 in <job>"), (0, "epoch 1 loss 0.5")], 1):
        LogLine.objects.create(job=job, assignment=a, seq=seq, rank=rank, line=line)
    token = Token.objects.create(user=alice).key
    every = cm("jobs", "logs", str(job.pk), url=base, token=token, config=tmp_path)
    assert every.returncode == 0, every.stderr
    assert every.stdout.splitlines() == ["[launcher] torchrun starts", "[rank 0] runtime: rank 0 in <job>",
                                         "[rank 1] runtime: rank 1 in <job>", "[rank 0] epoch 1 loss 0.5"]
    ranked = cm("jobs", "logs", str(job.pk), "--rank", "0", "--grep", "loss", "--json", url=base, token=token,
                config=tmp_path)
    assert [json.loads(x)["line"] for x in ranked.stdout.splitlines()] == ["epoch 1 loss 0.5"]
    with Client(base, token) as c:
        assert [x["seq"] for x in c.logs(job.pk, after=2)] == [3, 4]
    theirs = JobFactory(owner=energy, status="running")
    refused = cm("jobs", "logs", str(theirs.pk), url=base, token=token, config=tmp_path)
    assert "404" in one_line_error(refused, 3)


@live
def test_a_validation_error_names_the_field_and_exits_2(base, alice, tmp_path):
    token = Token.objects.create(user=alice).key
    job_file = tmp_path / "job.yaml"
    job_file.write_text("name: bad\ntemplate: tabular-classifier\ndataset: sample:breast-cancer\n"
                        "nodes: 0\ngpus_per_node: 1\ngpu_models: [cpu]\nmax_price: 1.00\nbudget: 5\n")
    result = cm("submit", str(job_file), "--json", url=base, token=token, config=tmp_path)
    assert one_line_error(result, 2).startswith("error: nodes: ")
    assert json.loads(result.stdout)["error"]["field"] == "nodes"
    with Client(base, token) as c, pytest.raises(ValidationError) as invalid:
        c.offers(region=["XX-YY"])
    assert invalid.value.field == "region" and "Unknown region" in invalid.value.detail
    # A usage error is exit 2 before anything is sent; an unknown job-file field too.
    one_line_error(cm("jobs", "show", "abc", url=base, token=token, config=tmp_path), 2)
    job_file.write_text("name: x\ntemplate: tabular-classifier\nbugdet: 5\n")
    assert "unknown job field 'bugdet'" in one_line_error(
        cm("quote", str(job_file), url=base, config=tmp_path), 2)


def test_server_down_is_exit_4(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(cm("offers", url=down, config=tmp_path, COMPUTEMESH_RETRIES="1"), 4)
    assert "cannot reach" in line
    one_line_error(cm("jobs", "list", url=down, token="0" * 40, config=tmp_path, COMPUTEMESH_RETRIES="0"), 4)


@live
def test_the_client_quotes_submits_watches_and_cancels(base, alice, carol, carol_offer, tmp_path):
    token = Token.objects.create(user=alice).key
    spec = {"name": "Sepsis", "template": "tabular-classifier", "dataset": "sample:breast-cancer",
            "nodes": 1, "gpus_per_node": 1, "regions": ["AP"], "max_price_per_gpu_hour": "9.00",
            "budget": "10.00", "deadline": "2099-01-01T00:00:00Z"}
    with Client(base, token) as c:
        assert carol_offer.pk in [o["id"] for o in c.offers(gpu_model=["A100 80GB"])["results"]]
        assert carol_offer.pk not in [o["id"] for o in c.offers(region=["AP"])["results"]]
        q = c.quote(spec)
        assert q["feasible"] is False and {r["constraint"] for r in q["reasons"]} & {"region", "regions"}
        csv = tmp_path / "vitals.csv"
        csv.write_text("label,a,b\n" + "".join(f"{i % 2},{i},{i * 3 % 7}\n" for i in range(30)))
        dataset = c.upload_dataset(csv, label_column="label")
        assert dataset["rows"] == 30 and [d["id"] for d in c.datasets()["results"]] == [dataset["id"]]
        job = c.submit({**spec, "dataset": str(dataset["id"]), "regions": ["EU"]}, idempotency_key="sepsis-1")
        # The same call resent (as after a timeout) is the same job.
        assert c.submit({**spec, "dataset": str(dataset["id"]), "regions": ["EU"]},
                        idempotency_key="sepsis-1")["id"] == job["id"]
        assert [j["id"] for j in c.iter_jobs()] == [job["id"]]
        with pytest.raises(Conflict, match="not finished"):
            c.delete_dataset(dataset["id"])
        cancelled = c.cancel(job["id"])
        assert cancelled["status"] == "cancelled" and job_succeeded(cancelled) is False
        events = list(c.watch(job["id"]))  # the history says it ended: the watch ends
        assert events[-1].type == "job" and events[-1].data["status"] == "cancelled"
    # The command line's view of the same job: exit 1 for a job that did not complete.
    watched = cm("jobs", "watch", str(job["id"]), url=base, token=token, config=tmp_path)
    assert "cancelled" in one_line_error(watched, 1)
    listed = cm("jobs", "list", "--json", url=base, token=token, config=tmp_path)
    assert [j["id"] for j in json.loads(listed.stdout)] == [job["id"]]
    deleted = cm("datasets", "delete", str(dataset["id"]), url=base, token=token, config=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert "no dataset with that id" in one_line_error(
        cm("datasets", "delete", str(dataset["id"]), url=base, token=token, config=tmp_path), 3).lower()


@live
def test_a_provider_registers_a_node_and_manages_its_offer(base, carol, tmp_path):
    token = Token.objects.create(user=carol).key
    created = cm("nodes", "create", "--name", "lab-1", "--gpu-model", "cpu", "--gpu-count", "2",
                 "--cpu-cores", "2", "--ram", "8", "--disk", "20", "--region", "EU-DE", "--json",
                 url=base, token=token, config=tmp_path)
    assert created.returncode == 0, created.stderr
    node = json.loads(created.stdout)
    assert node["agent_token"] and node["status"] == "pending"
    with Client(base, token) as c:
        offer = c.offer_create(node=node["id"], gpus_offered=2, price_per_gpu_hour="0.25")
        assert c.offer_pause(offer["id"])["status"] == "paused"
        mine = cm("offers", "--mine", "--json", url=base, token=token, config=tmp_path)
        assert mine.returncode == 0, mine.stderr
        assert [(o["id"], o["status"]) for o in json.loads(mine.stdout)["results"]] == [
            (offer["id"], "paused")]
        assert offer["id"] not in [o["id"] for o in c.offers()["results"]]
        assert c.offer_update(offer["id"], price_per_gpu_hour="0.30")["price_per_gpu_hour"].startswith("0.3")
        assert c.offer_resume(offer["id"])["status"] == "active"
        rotated = c.node_rotate_token(node["id"])
        assert rotated["agent_token"] != node["agent_token"]
        assert [n["id"] for n in c.iter_nodes()] == [node["id"]]


def test_the_client_alone_in_a_fresh_venv_passes_its_own_tests(tmp_path):
    """The client is a distribution of its own: a fresh virtual environment that holds only
    what its metadata declares (and pytest) runs its tests, and Django and torch are not
    importable there. Nothing is downloaded: the declared packages are linked from this one."""
    python = linked_venv(tmp_path, [*declared(ROOT / "client" / "pyproject.toml"), "pytest"],
                         [ROOT / "client"])
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    for module in ("django", "torch", "marketplace"):
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, env=env,
                               cwd=tmp_path, timeout=60, check=False)
        assert probe.returncode != 0, f"{module} is importable in the client's venv"
    result = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=ROOT / "client", env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout
