"""A multi-node code bundle's job is placed only on nodes whose agent can confine its sandbox
to the job's peers (issue 16, workers/agent/peer_firewall.py); single-node bundles and
templates are not affected. The agent says so in its hello; the quote says why not."""

from decimal import Decimal

import pytest

from marketplace.models import Assignment, Job, Node
from marketplace.services import placement
from marketplace.services.execution import agent_hello, start_message

from .api_support import job_body
from .factories import JobFactory, NodeFactory, OfferFactory
from .test_api_bundles import RUNTIME
from .test_bundle_matching import make_bundle

pytestmark = pytest.mark.django_db
QUOTE = "/api/v1/jobs/quote/"


def custom_offer(*, firewall: bool, price: str = "1.50"):
    node = NodeFactory(runtime=RUNTIME, peer_firewall=firewall)
    return OfferFactory(node=node, accepts_custom_code=True, price_per_gpu_hour=price)


def quote(api, user, **body):
    response = api.as_user(user).post(QUOTE, job_body(**body), format="json")
    assert response.status_code == 200, response.content
    return response.json()


def test_a_multi_node_bundle_is_not_matched_on_nodes_without_the_peers_firewall(api, alice, healthcare):
    for _ in range(2):
        custom_offer(firewall=False)
    bundle = make_bundle(healthcare)
    body = quote(api, alice, template="", bundle=bundle.pk, dataset="", nodes=2)
    assert body["feasible"] is False
    funnel = body["reasons"][0]
    assert funnel["constraint"] == "peer_firewall"
    assert "none able to confine custom code to its peers" in funnel["message"]
    relax = next(r for r in body["reasons"] if r["constraint"] == "peer_firewall" and r["code"] == "relax")
    assert "cannot confine a multi-node job's code to its peers" in relax["message"]
    assert "root with nftables and cgroup v2" in relax["message"]
    # The same bundle on one node, and a template on two, are matched there.
    assert quote(api, alice, template="", bundle=bundle.pk, dataset="", nodes=1)["feasible"] is True
    assert quote(api, alice, nodes=2)["feasible"] is True
    # Nodes that can: matched.
    Node.objects.update(peer_firewall=True)
    assert quote(api, alice, template="", bundle=bundle.pk, dataset="", nodes=2)["feasible"] is True


def test_placement_takes_only_nodes_with_the_peers_firewall(healthcare):
    custom_offer(firewall=False, price="0.50")  # the cheapest, but it cannot confine the code
    fits = [custom_offer(firewall=True, price="1.00"), custom_offer(firewall=True, price="1.20")]
    job = JobFactory(owner=healthcare, template="", dataset_ref="", bundle=make_bundle(healthcare),
                     nodes=2, status=Job.Status.FUNDED)
    placed = placement.job_place(job_id=job.pk)
    assert sorted(a.offer_id for a in placed) == sorted(o.pk for o in fits)


def test_the_hello_says_whether_the_node_has_the_firewall_and_its_address(db):
    node = NodeFactory()
    hello = {"type": "hello", "agent_version": "t", "advertise_addr": "10.1.2.3",
             "sandbox": {"available": True, "mode": "custom", "peer_firewall": True}}
    agent_hello(node=node, hello=hello)
    node.refresh_from_db()
    assert (node.peer_firewall, node.advertise_addr) == (True, "10.1.2.3")
    # Only a JSON true counts; only an IP literal is kept (it goes into other nodes' firewalls).
    for sandbox, address in (({"peer_firewall": "yes"}, "peer.example"), ("on", '10.0.0.1" accept'),
                             (None, None), ({"peer_firewall": 1}, ["10.0.0.1"])):
        agent_hello(node=node, hello={**hello, "sandbox": sandbox, "advertise_addr": address})
        node.refresh_from_db()
        assert (node.peer_firewall, node.advertise_addr) == (False, ""), (sandbox, address)


def test_the_start_message_names_the_other_nodes_as_peers(db, healthcare):
    job = JobFactory(owner=healthcare, nodes=3, status=Job.Status.RUNNING)
    nodes = [NodeFactory(advertise_addr=address) for address in ("10.0.0.1", "10.0.0.2", "")]
    parts = [Assignment.objects.create(job=job, node=node, offer=OfferFactory(node=node), attempt=1,
                                       node_rank=rank, gpus=1, price_per_gpu_hour=Decimal("1"))
             for rank, node in enumerate(nodes)]
    assert start_message(parts[0])["peers"] == ["10.0.0.2"]  # the third advertises nothing
    assert start_message(parts[2])["peers"] == ["10.0.0.1", "10.0.0.2"]
    single = JobFactory(owner=healthcare, nodes=1, status=Job.Status.RUNNING)
    alone = Assignment.objects.create(job=single, node=nodes[0], offer=OfferFactory(node=nodes[0]),
                                      attempt=1, node_rank=0, gpus=1, price_per_gpu_hour=Decimal("1"))
    assert start_message(alone)["peers"] == []
