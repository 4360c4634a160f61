"""Issue 18 (logs): each rank's output, redacted by the agent, validated at the platform's
boundary, stored per job and served to the owner over the API."""

from pathlib import Path

import pytest

from marketplace.models import Assignment, Job, LogLine
from marketplace.services import agent_ingest
from marketplace.services.agent_protocol import AgentMessageError, parse_data
from workers.agent.rank_logs import RankLogs, Redactor, split_rank

from .factories import JobFactory, NodeFactory, OfferFactory

A = Assignment.Status


# --- the agent: which rank, redaction, bounds (no Django) ------------------------------------
def _redactor() -> Redactor:
    return Redactor(job_dir=Path("/home/prov/.computemesh/jobs/a42"), home=Path("/home/prov"),
                    runtime=[Path("/opt/venv/lib/python3.11/site-packages"), Path("/opt/venv")])


def test_the_providers_paths_are_redacted_longest_first():
    redact = _redactor()
    assert redact("in /home/prov/.computemesh/jobs/a42/data.csv") == "in <job>/data.csv"
    assert (redact('File "/opt/venv/lib/python3.11/site-packages/torch/nn.py", line 3')
            == 'File "<runtime>/torch/nn.py", line 3')
    assert redact("/opt/venv/bin/python and /home/prov/notes") == "<runtime>/bin/python and ~/notes"


def test_torchruns_prefix_names_the_rank_and_its_own_lines_have_none():
    assert split_rank("[rank3]:step 1") == (3, "step 1")
    assert split_rank("W1207 torchrun says") == (None, "W1207 torchrun says")


def test_lines_are_cut_stripped_and_bounded_in_rate():
    now = [0.0]
    logs = RankLogs(_redactor(), rate=100, burst=300, clock=lambda: now[0])
    [item] = logs.add(b"[rank1]:\x1b[31mred\x1b[0m in /home/prov/.computemesh/jobs/a42\n", "stderr")
    assert item["rank"] == 1 and item["stream"] == "stderr" and item["seq"] == 1
    assert item["text"] == "[31mred[0m in <job>"
    assert len(RankLogs(_redactor()).add(b"x" * 5000, "stdout")[0]["text"]) == 2000
    dropped = sum(not logs.add(b"[rank0]:" + b"y" * 200, "stdout") for _ in range(5))
    assert dropped >= 4  # over 100 bytes/s with no time passing
    now[0] += 10
    note, line = logs.add(b"[rank0]:back", "stdout")
    assert "dropped" in note["text"] and line["text"] == "back"


# --- the platform's boundary ---------------------------------------------------------------
def _log(lines, seq=1, assignment=1):
    return {"type": "log", "id": f"l{seq}", "assignment": assignment, "seq": seq, "lines": lines}


@pytest.mark.parametrize("bad", [
    [{"text": 5}], [{"text": "x", "rank": "0"}], [{"text": "x", "rank": -1}],
    [{"text": "x", "stream": "stdin"}], [7], "not a list",
])
def test_a_malformed_log_message_is_refused(bad):
    with pytest.raises(AgentMessageError):
        parse_data(_log(bad))


def test_control_characters_are_removed_and_old_agents_bare_lines_kept():
    _, _, _, clean = parse_data(_log([{"text": "a\x07b\x1b[0m\x85c", "rank": 0, "stream": "stderr"},
                                      "old line"]))
    assert clean["lines"] == [{"rank": 0, "stream": "stderr", "text": "ab[0mc"},
                              {"rank": None, "stream": "stdout", "text": "old line"}]


def _assignment(job, node_rank=1, gpus=2) -> Assignment:
    node = NodeFactory()
    offer = OfferFactory(node=node)
    return Assignment.objects.create(job=job, node=node, offer=offer, attempt=1, node_rank=node_rank,
                                     gpus=gpus, price_per_gpu_hour=offer.price_per_gpu_hour,
                                     status=A.RUNNING)


@pytest.mark.django_db
def test_only_the_ranks_the_assignment_runs_are_stored():
    a = _assignment(JobFactory(status=Job.Status.RUNNING, nodes=2, gpus_per_node=2))
    lines = [{"text": "mine", "rank": 2}, {"text": "also mine", "rank": 3},
             {"text": "another node's", "rank": 0}, {"text": "launcher"}]
    assert agent_ingest.agent_data(node=a.node, message=_log(lines, assignment=a.pk)) == "applied"
    stored = list(LogLine.objects.filter(job=a.job).values_list("seq", "rank", "line"))
    assert stored == [(1, 2, "mine"), (2, 3, "also mine"), (3, None, "launcher")]


@pytest.mark.django_db
def test_a_jobs_log_is_capped(monkeypatch):
    monkeypatch.setattr(agent_ingest, "MAX_LOG_LINES_PER_JOB", 3)
    a = _assignment(JobFactory(status=Job.Status.RUNNING), node_rank=0, gpus=1)
    for seq in (1, 2):
        agent_ingest.agent_data(node=a.node, message=_log([{"text": f"{seq}.{i}", "rank": 0}
                                                           for i in range(2)], seq, a.pk))
    assert list(LogLine.objects.filter(job=a.job).values_list("line", flat=True)) == ["1.0", "1.1", "2.0"]


# --- the API --------------------------------------------------------------------------------
@pytest.fixture
def job_with_logs(healthcare):
    job = JobFactory(owner=healthcare, status=Job.Status.RUNNING)
    a = _assignment(job, node_rank=0, gpus=2)
    for seq, (rank, line) in enumerate([(None, "torchrun starts"), (0, "runtime: rank 0 in <job>"),
                                        (1, "runtime: rank 1 in <job>"), (0, "epoch 1 loss 0.5")], 1):
        LogLine.objects.create(job=job, assignment=a, seq=seq, rank=rank, line=line)
    return job


def test_the_owner_reads_filters_and_downloads_the_lines(api, alice, job_with_logs):
    api.as_user(alice)
    url = f"/api/v1/jobs/{job_with_logs.pk}/logs/"
    body = api.get(url).json()
    assert [(x["seq"], x["rank"], x["line"]) for x in body["lines"]][:2] == [
        (1, None, "torchrun starts"), (2, 0, "runtime: rank 0 in <job>")]
    assert [x["seq"] for x in api.get(url, {"after": 2}).json()["lines"]] == [3, 4]
    assert [x["seq"] for x in api.get(url, {"rank": 0}).json()["lines"]] == [2, 4]
    assert [x["seq"] for x in api.get(url, {"q": "LOSS"}).json()["lines"]] == [4]
    text = api.get(url, {"download": 1})
    assert text["Content-Type"].startswith("text/plain")
    assert text.content.decode().splitlines()[:2] == ["[launcher] torchrun starts",
                                                       "[rank 0] runtime: rank 0 in <job>"]
    for bad in ({"after": "x"}, {"rank": "-1"}, {"q": "q" * 201}):
        assert api.get(url, bad).status_code == 400


def test_another_tenant_gets_404(api, bob, job_with_logs):
    api.as_user(bob)
    assert api.get(f"/api/v1/jobs/{job_with_logs.pk}/logs/").status_code == 404
    api.as_user(None)
    assert api.get(f"/api/v1/jobs/{job_with_logs.pk}/logs/").status_code in (401, 403)


def test_a_line_past_the_pipes_limit_is_dropped_and_the_reader_goes_on():
    import asyncio
    from types import SimpleNamespace

    from workers.agent.run_assignment import AssignmentRun

    async def read() -> list[dict]:
        pipe = asyncio.StreamReader(limit=1024)
        pipe.feed_data(b"[rank0]:before\n" + b"z" * 5000 + b"\n[rank0]:after\n")
        pipe.feed_eof()
        sent: list[dict] = []

        async def flush() -> None:
            sent.extend(run.log_batch)
            run.log_batch = []
        run = SimpleNamespace(rank_logs=RankLogs(_redactor()), last_lines=[], log_batch=[],
                              last_activity=0.0, _flush_logs=flush)
        await AssignmentRun._read_output(run, pipe, "stdout")
        return sent
    assert [x["text"] for x in asyncio.run(read())] == [
        "before", "[a line over 64 KiB was dropped]", "after"]


def test_the_job_page_offers_the_filter_and_the_text_download(client, alice, job_with_logs):
    from django.urls import reverse

    client.force_login(alice)
    html = client.get(reverse("job_detail", args=[job_with_logs.pk])).content.decode()
    assert 'data-testid="log-filter"' in html
    assert f'href="/api/v1/jobs/{job_with_logs.pk}/logs/?download=1"' in html
    download = client.get(f"/api/v1/jobs/{job_with_logs.pk}/logs/?download=1")  # the session suffices
    assert download.status_code == 200 and b"[rank 1] runtime: rank 1 in <job>" in download.content
