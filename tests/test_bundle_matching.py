"""A code bundle's job is matched only on offers that accept custom code and whose node's
agent reported the runtime the bundle needs; the quote says why not (issue 16)."""

import pytest

from marketplace import runtimes
from marketplace.models import CodeBundle, Job
from marketplace.services import batch_placement, placement

from .api_support import job_body
from .factories import JobFactory, NodeFactory, OfferFactory
from .test_api_bundles import RUNTIME

pytestmark = pytest.mark.django_db
QUOTE = "/api/v1/jobs/quote/"


def make_bundle(owner, runtime=RUNTIME) -> CodeBundle:
    return CodeBundle.objects.create(owner=owner, name="task.py", kind="py", file="bundles/x.enc",
                                     size_bytes=10, sha256=f"{runtime:0<64}"[:64].replace(".", "0"),
                                     runtime=runtime, entry="task:T", params_schema={})


def offer(*, custom=True, runtime=RUNTIME, price="1.50"):
    node = NodeFactory(runtime=runtime)
    return OfferFactory(node=node, accepts_custom_code=custom, price_per_gpu_hour=price)


def quote(api, user, bundle):
    response = api.as_user(user).post(QUOTE, job_body(template="", bundle=bundle.pk, dataset=""),
                                      format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_only_offers_that_accept_custom_code_with_the_runtime(api, alice, healthcare):
    offer(custom=False, price="0.50")  # cheapest, but the provider has not opted in
    offer(runtime="", price="0.70")  # opted in, agent reported no runtime
    fits = offer(price="1.90")
    body = quote(api, alice, make_bundle(healthcare))
    assert body["feasible"] is True
    assert [c["offer_id"] for c in body["candidates"]] == [fits.pk]


def test_an_offer_without_accepts_custom_code_is_not_matched_and_the_quote_says_why(api, alice,
                                                                                  healthcare):
    offer(custom=False)
    body = quote(api, alice, make_bundle(healthcare))
    assert body["feasible"] is False
    funnel = body["reasons"][0]
    assert funnel["constraint"] == "custom_code"
    assert "none accepting custom code" in funnel["message"]
    relax = next(r for r in body["reasons"] if r["constraint"] == "custom_code" and r["code"] == "relax")
    assert "do not accept custom code" in relax["message"]
    # The same job with a template is matched there.
    templated = api.as_user(alice).post(QUOTE, job_body(), format="json").json()
    assert templated["feasible"] is True


def test_a_bundle_needing_an_unknown_runtime_gets_a_why_no_match(api, alice, healthcare):
    offer()
    body = quote(api, alice, make_bundle(healthcare, runtime="cm-runtime-2099.01"))
    assert body["feasible"] is False
    assert body["reasons"][0]["constraint"] == "runtime"
    why = next(r for r in body["reasons"] if r["code"] == "runtime")
    assert "cm-runtime-2099.01" in why["message"] and "does not list" in why["message"]
    assert RUNTIME in why["message"]  # what the nodes do offer
    # Relaxing the runtime is never suggested: the code would fail there.
    assert not any(r["code"] == "relax" and r["constraint"] == "runtime" for r in body["reasons"])


def test_a_known_runtime_no_node_offers(api, alice, healthcare):
    offer(runtime="cm-runtime-2025.06")
    body = quote(api, alice, make_bundle(healthcare))
    why = next(r for r in body["reasons"] if r["code"] == "runtime")
    assert f"needs runtime {RUNTIME}" in why["message"] and "cm-runtime-2025.06" in why["message"]


@pytest.mark.parametrize("place", ["job_place", "batch"])
def test_placement_keeps_to_the_same_rules(healthcare, place):
    bundle = make_bundle(healthcare)
    offer(custom=False, price="0.50")
    offer(runtime="cm-runtime-2025.06", price="0.60")
    fits = offer(price="2.00")
    job = JobFactory(owner=healthcare, template="", dataset_ref="", bundle=bundle,
                     status=Job.Status.FUNDED)
    if place == "job_place":
        placed = placement.job_place(job_id=job.pk)
        assert [a.offer_id for a in placed] == [fits.pk]
    else:
        placed = batch_placement.jobs_place_waiting()
        assert job.pk in placed
        assert list(job.assignments.values_list("offer_id", flat=True)) == [fits.pk]


def test_the_agents_hello_names_its_runtime_and_the_node_keeps_it(db):
    from marketplace.services.execution import agent_hello
    from workers.agent.runtime import runtime_name

    node = NodeFactory(runtime="")
    # This environment is the agent extra's: it offers the newest runtime in the data file.
    assert runtime_name() == RUNTIME
    agent_hello(node=node, hello={"type": "hello", "agent_version": "t", "runtime": runtime_name()})
    node.refresh_from_db()
    assert node.runtime == RUNTIME
    agent_hello(node=node, hello={"type": "hello", "agent_version": "t", "runtime": "../x y"})
    node.refresh_from_db()
    assert node.runtime == ""  # malformed: none


@pytest.mark.parametrize(("installed", "wanted", "ok"), [
    ("2.13.0+cpu", "==2.13.0", True), ("2.13.1", "==2.13.0", False), ("2.4.6", ">=1.26", True),
    ("1.25.2", ">=1.26", False), ("1.26", ">=1.26.0", True), ("1.9.1", ">=1.10", False),
])
def test_runtime_versions(installed, wanted, ok):
    from workers.agent.runtime import version_satisfies

    assert version_satisfies(installed, wanted) is ok


def test_a_runtime_missing_a_package_is_not_offered():
    from importlib import metadata

    from workers.agent.runtime import runtime_satisfied

    runtime = runtimes.runtimes()[RUNTIME]
    as_dict = {"python": runtime.python, "packages": runtime.packages}

    def without_scipy(name):
        if name == "scipy":
            raise metadata.PackageNotFoundError(name)
        return metadata.version(name)

    assert runtime_satisfied(as_dict) is True
    assert runtime_satisfied(as_dict, version_of=without_scipy) is False


def test_the_start_message_carries_the_bundle_and_the_zip_dataset(db, healthcare):
    from decimal import Decimal

    from marketplace.models import Assignment, Dataset
    from marketplace.services.execution import start_message

    bundle = make_bundle(healthcare)
    data = Dataset.objects.create(owner=healthcare, name="x.zip", file="datasets/x.enc",
                                  size_bytes=5, rows=0, sha256="b" * 64, kind="zip", entries=3)
    job = JobFactory(owner=healthcare, template="", dataset_ref=str(data.pk), dataset=data,
                     bundle=bundle, status=Job.Status.RUNNING)
    node = NodeFactory(runtime=RUNTIME)
    a = Assignment.objects.create(job=job, node=node, offer=OfferFactory(node=node), attempt=1,
                                  node_rank=0, gpus=1, price_per_gpu_hour=Decimal("1"))
    message = start_message(a)
    base = f"/api/v1/agent/assignments/{a.pk}/"
    assert message["bundle"] == {"url": f"{base}bundle/", "sha256": bundle.sha256,
                                 "size_bytes": 10, "kind": "py", "name": "task.py",
                                 "runtime": RUNTIME, "entry": "task:T"}
    assert message["dataset"] == {"kind": "zip"} and message["dataset_url"] == f"{base}dataset/"
    assert message["dataset_sha256"] == "b" * 64
    job.dataset, job.dataset_ref = None, ""
    job.save()
    assert start_message(a)["dataset"] == {"kind": "none"} and start_message(a)["dataset_url"] is None
