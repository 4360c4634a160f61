from decimal import Decimal

from marketplace.services.job_spec import JobSpec
from marketplace.services.jobs import job_submit
from marketplace.services.matching import quote_job


def test_submit_and_quote(alice, healthcare, carol_offer, dave_offer, future):
    spec = JobSpec(name="Sepsis risk", template="tabular-classifier",
                   dataset="sample:breast-cancer", nodes=2, gpus_per_node=2,
                   max_price_per_gpu_hour=Decimal("2"), budget=Decimal("50"), deadline=future)
    job = job_submit(owner=healthcare, spec=spec, actor=alice)
    assert job.status == "submitted"
    assert [e.to_status for e in job.events.all()] == ["submitted"]
    q = quote_job(spec=spec)
    assert q.feasible, q.reasons
    assert {c.node_id for c in q.candidates} == {carol_offer.node_id, dave_offer.node_id}
    q2 = quote_job(spec=JobSpec(**{**spec.__dict__, "min_gpu_memory_gb": 40}))
    assert not q2.feasible
    print(q2.reasons)
