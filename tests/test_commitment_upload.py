"""The agents' upload of gradient commitments (PUT /api/v1/agent/assignments/{id}/commitments/
{step}/): every field checked at the boundary, each node's copy kept apart, another
assignment's token refused."""

import hashlib
import json

import pytest

from marketplace.models import GradientCommitment
from marketplace.services import commitments as service
from workers.training import commitments as runtime

from .verify_support import Agent, cpu_node, running_job

pytestmark = pytest.mark.django_db


def _rows(first: int, last: int, world: int = 2, k: int = service.K) -> list[dict]:
    return [{"step": s, "grad": [[0.5 * s + r + i for i in range(k)] for r in range(world)],
             "param": [[1.25] * k for _ in range(world)]} for s in range(first, last)]


def _body(rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture
def two_nodes():
    return running_job([cpu_node(), cpu_node()])


def test_the_platform_expects_the_runtimes_number_of_projections():
    assert service.K == runtime.K


def test_each_node_uploads_its_own_copy_once(client, two_nodes):
    job, parts = two_nodes
    body = _body([{**_rows(0, 1)[0], "model": ["ab" * 32] * 2}] + _rows(1, 7))
    for part in parts:
        assert Agent(client, part).put("commitments/7/", body).status_code == 201
    assert Agent(client, parts[0]).put("commitments/7/", body).status_code == 200  # a retry
    stored = GradientCommitment.objects.filter(assignment__job=job).order_by("assignment__node_rank")
    assert [(c.assignment_id, c.from_step, c.to_step) for c in stored] == [(parts[0].pk, 0, 7),
                                                                            (parts[1].pk, 0, 7)]
    assert stored[0].table == [{**_rows(0, 1)[0], "model": ["ab" * 32] * 2}] + _rows(1, 7)
    other = _body(_rows(0, 7, k=service.K)[:-1] + [{**_rows(6, 7)[0], "param": [[2.0] * 3] * 2}])
    response = Agent(client, parts[1]).put("commitments/7/", other)
    assert response.status_code == 409 and response.json()["code"] == "commitments_conflict"
    overlapping = Agent(client, parts[1]).put("commitments/9/", _body(_rows(5, 9)))
    assert overlapping.status_code == 409
    assert Agent(client, parts[1]).put("commitments/14/", _body(_rows(7, 14))).status_code == 201


@pytest.mark.parametrize("body, says", [
    (b"not json\n", "Not JSON lines"),
    (b"", "Send 1 to"),
    (b'{"step": 6, "grad": [[NaN, 1, 2], [1, 2, 3]], "param": [[1, 2, 3], [1, 2, 3]]}\n', "Not JSON"),
    (b'{"step": 6, "grad": [[1e999, 1, 2], [1, 2, 3]], "param": [[1, 2, 3], [1, 2, 3]]}\n', "finite"),
    (b'{"step": 6, "grad": [[true, 1, 2], [1, 2, 3]], "param": [[1, 2, 3], [1, 2, 3]]}\n', "finite"),
    (b'{"step": 6.0, "grad": [[1, 1, 2], [1, 2, 3]], "param": [[1, 2, 3], [1, 2, 3]]}\n', "integer"),
    (b'{"step": 6, "grad": [[1, 1, 2]], "param": [[1, 2, 3], [1, 2, 3]]}\n', "2 ranks"),
    (b'{"step": 6, "grad": [[1, 1], [1, 2]], "param": [[1, 2, 3], [1, 2, 3]]}\n', "3 numbers"),
    (b'{"step": 6, "grad": [[1, 1, 2], [1, 2, 3]], "param": [[1, 2, 3], [1, 2, 3]], "x": 1}\n', "only"),
    (b'[1, 2]\n', "object"),
    (_body(_rows(0, 6)), "up to step 6"),  # ends a step early
    (_body(_rows(0, 3) + _rows(4, 7)), "one by one"),  # a gap
    (_body(_rows(0, 7) + _rows(6, 7)), "one by one"),  # a step twice
    (_body(_rows(0, 7, world=3)), "2 ranks"),
    (_body([{**_rows(0, 1)[0], "model": ["ab" * 32]}] + _rows(1, 7)), "2 SHA-256 digests"),
    (_body([{**_rows(0, 1)[0], "model": ["AB" * 32] * 2}] + _rows(1, 7)), "2 SHA-256 digests"),
])
def test_bad_input_is_refused_with_a_400_that_says_why(client, two_nodes, body, says):
    _job, parts = two_nodes
    response = Agent(client, parts[0]).put("commitments/7/", body)
    assert response.status_code == 400, response.content
    assert says in response.json()["detail"]
    assert not GradientCommitment.objects.exists()


def test_steps_outside_the_placement_are_refused(client, two_nodes):
    job, parts = two_nodes
    type(parts[0]).objects.filter(pk=parts[0].pk).update(resume_step=5)
    job.total_steps = 20
    job.save(update_fields=["total_steps"])
    agent = Agent(client, parts[0])
    assert agent.put("commitments/5/", _body(_rows(0, 5))).status_code == 400  # not after the resume
    assert "before step 5" in agent.put("commitments/9/", _body(_rows(3, 9))).json()["detail"]
    assert "past the job's last step" in agent.put("commitments/21/", _body(_rows(14, 21))).json()["detail"]
    assert agent.put("commitments/9/", _body(_rows(5, 9))).status_code == 201


def test_a_declared_digest_and_a_size_limit_hold(client, two_nodes, settings):
    _job, parts = two_nodes
    agent = Agent(client, parts[0])
    body = _body(_rows(0, 7))
    wrong = client.generic("PUT", f"/api/v1/agent/assignments/{parts[0].pk}/commitments/7/", body,
                           content_type="application/octet-stream",
                           HTTP_AUTHORIZATION=f"Bearer {agent.token}",
                           HTTP_X_CONTENT_SHA256=hashlib.sha256(b"other").hexdigest())
    assert wrong.status_code == 400 and "declared SHA-256" in wrong.json()["detail"]
    huge = b" " * (service.MAX_BYTES + 1)
    assert agent.put("commitments/7/", huge).status_code == 400


def test_another_assignments_token_and_no_token_are_refused(client, two_nodes):
    _job, parts = two_nodes
    _other_job, others = running_job([cpu_node(), cpu_node()])
    body = _body(_rows(0, 7))
    stranger = client.generic("PUT", f"/api/v1/agent/assignments/{parts[0].pk}/commitments/7/", body,
                              content_type="application/octet-stream",
                              HTTP_AUTHORIZATION=f"Bearer {Agent(client, others[0]).token}",
                              HTTP_X_CONTENT_SHA256=hashlib.sha256(body).hexdigest())
    assert stranger.status_code == 404
    anonymous = client.generic("PUT", f"/api/v1/agent/assignments/{parts[0].pk}/commitments/7/", body,
                               content_type="application/octet-stream",
                               HTTP_X_CONTENT_SHA256=hashlib.sha256(body).hexdigest())
    assert anonymous.status_code == 401
    assert not GradientCommitment.objects.exists()


def test_a_job_on_one_node_has_no_commitments_to_upload(client):
    _job, parts = running_job([cpu_node()])
    response = Agent(client, parts[0]).put("commitments/7/", _body(_rows(0, 7, world=1)))
    assert response.status_code == 409 and response.json()["code"] == "not_ddp"
