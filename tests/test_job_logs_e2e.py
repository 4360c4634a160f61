"""Issue 18 (logs), end to end: a real agent runs a template job with torchrun, and each
rank's own lines reach the API with the provider's paths redacted."""

import pytest

from .test_execution_e2e import consumer_token, cpu_nodes, job_body, stack, wait_status  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]


def test_each_ranks_lines_reach_the_api_with_the_workdir_redacted(stack, consumer_token):  # noqa: F811
    (node_token,) = cpu_nodes(1)
    stack.agent("agent-a", node_token)
    code, job = stack.http("POST", "/api/v1/jobs/", token=consumer_token,
                           body=job_body(params={"epochs": 2}))
    assert code == 201, job
    wait_status(stack, consumer_token, job["id"], {"completed"}, timeout=180)
    code, body = stack.http("GET", f"/api/v1/jobs/{job['id']}/logs/", token=consumer_token)
    assert code == 200, body
    lines = body["lines"]
    starts = {x["rank"]: x["line"] for x in lines if x["line"].startswith("runtime: rank")
              and "finished" not in x["line"]}
    assert set(starts) == {0, 1}, lines
    assert starts[0].startswith("runtime: rank 0 of 2 on cpu") and starts[0].endswith(" in <job>")
    assert any(x["rank"] == 0 and x["line"] == "runtime: rank 0 finished (exit code 0)" for x in lines)
    assert not any(str(stack.tmp) in x["line"] for x in lines), lines
    code, rank1 = stack.http("GET", f"/api/v1/jobs/{job['id']}/logs/?rank=1", token=consumer_token)
    assert code == 200 and {x["rank"] for x in rank1["lines"]} == {1}
