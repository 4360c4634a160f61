"""A real Celery worker on the `verify` queue (its own process and its own redis-server, so
that no other test run's worker takes these tasks), with this process's Celery app pointed
at that broker: the platform's own enqueue path (`transaction.on_commit` → `send_task`)
reaches it. Also: real checkpoint bytes for the tabular template, and an agent's messages
through the platform's ingest (`agent_ingest.agent_data`, what the agent socket calls)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import zipfile
from decimal import Decimal

import pytest
import redis
import torch
from celery import current_app

from marketplace import catalogue
from marketplace.models import Assignment, Job, Node
from marketplace.services import agent_ingest
from marketplace.services.execution import assignment_token
from webapp.celery import app as celery_app
from workers.training import commitments, nets, replay, schedule

from .factories import JobFactory, NodeFactory, OfferFactory
from .stack import Stack

TEMPLATE = "tabular-classifier"
DATASET = {"kind": "sample", "name": "breast-cancer"}
PARAMS = catalogue.get_template(TEMPLATE).validate_params(
    {"epochs": 2, "batch_size": 16, "learning_rate": 0.003, "hidden_units": 8, "hidden_layers": 1,
     "dropout": 0.0, "seed": 0})


def _point(url: str) -> None:
    """Send this process's tasks to `url`. The pools stay open: they live in kombu's global
    registries, keyed by broker URL and shared by every Celery app of the process, so closing
    one (or resetting the registries) left a closed pool behind for the next test that
    enqueued ('Acquire on closed pool' in every later test of a full run)."""
    for app in {celery_app, current_app._get_current_object()}:
        app.conf.broker_url = url
        app._pool = None
        app.amqp._producer_pool = None


@pytest.fixture
def verify_worker(tmp_path):
    stack = Stack(tmp_path, redis_url=None, queues="verify")
    # Every stretch of these short jobs is replayed (0..5 and 5..10 alike), so what a test
    # shows does not depend on which one the draw would take.
    stack.env["VERIFY_REPLAY_SHARE"] = "1.0"
    stack.own_redis.start()
    saved = celery_app.conf.broker_url
    _point(stack.own_redis.url)
    try:
        stack.worker("verify-worker", beat=False, concurrency=1)
        yield stack
    finally:
        stack.stop()
        _point(saved)


def queued(stack: Stack, queue: str) -> list[str]:
    """Names of the tasks waiting on `queue` of the stack's broker (no worker takes it)."""
    return [json.loads(raw)["headers"]["task"]
            for raw in redis.Redis.from_url(stack.own_redis.url).lrange(queue, 0, -1)]


# --- checkpoints ---------------------------------------------------------------------------
def fresh(world: int) -> tuple[replay.Replayer, torch.nn.Module, torch.optim.Optimizer]:
    runner = replay.Replayer(replay.Job(template=TEMPLATE, params=PARAMS, dataset=DATASET, world_size=world))
    torch.manual_seed(0)
    model, _ = nets.build(TEMPLATE, PARAMS, runner.splits)
    return runner, model, schedule.optimizer(model, PARAMS)


def saved(state: dict) -> bytes:
    out = io.BytesIO()
    torch.save(state, out)
    return out.getvalue()


def checkpoint_bytes(step: int, model: dict, optimizer: dict) -> bytes:
    """As the runtime writes one (workers/training/checkpoint.save)."""
    return saved({"step": step, "model": model, "optimizer": optimizer, "template": TEMPLATE, "epoch": 0})


def zip_garbage() -> bytes:
    """A zip archive (what torch.save writes) that torch.load cannot read."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x04 not a pickle at all")
    return out.getvalue()


def wrong_shapes(step: int) -> bytes:
    """Loads with weights_only, but is not this job's model."""
    return checkpoint_bytes(step, {"net.0.weight": torch.zeros(3, 3)}, {"state": {}, "param_groups": []})


# --- the platform's rows and the agent's side ------------------------------------------------
def cpu_node(provider=None, price: str = "1.20") -> Node:
    kw = {"provider": provider} if provider is not None else {}
    node = NodeFactory(gpu_model="cpu", gpu_count=2, gpu_memory_gb=0, **kw)
    OfferFactory(node=node, price_per_gpu_hour=Decimal(price))
    return node


def running_job(nodes: list[Node], **kw) -> tuple[Job, list[Assignment]]:
    job = JobFactory(status=Job.Status.RUNNING, attempt=1, template=TEMPLATE, params=PARAMS,
                     dataset_ref="sample:breast-cancer", nodes=len(nodes), gpus_per_node=1,
                     gpu_models=["cpu"], **kw)
    parts = [Assignment.objects.create(job=job, node=node, offer=node.offers.get(), attempt=1, node_rank=rank,
                                       gpus=1, price_per_gpu_hour=node.offers.get().price_per_gpu_hour,
                                       status=Assignment.Status.RUNNING)
             for rank, node in enumerate(nodes)]
    return job, parts


class Agent:
    """One node's agent, as far as the platform can tell: its HTTP transfers with the
    assignment's token (Django's test client, the real views) and its numbered messages
    through the ingest the agent socket uses."""

    _ids = itertools.count(1)

    def __init__(self, client, assignment: Assignment):
        # Numbered after what the platform applied already (an agent's outbox does the same).
        self.client, self.a = client, assignment
        self.seq = Assignment.objects.get(pk=assignment.pk).last_seq
        self.token = assignment_token(assignment)

    def say(self, kind: str, **fields) -> str:
        self.seq += 1
        return agent_ingest.agent_data(node=self.a.node, message={
            "type": kind, "id": f"m{next(self._ids)}", "assignment": self.a.pk, "seq": self.seq, **fields})

    def progress(self, step: int, total: int = 100) -> None:
        self.say("progress", items=[{"step": step, "total_steps": total, "epoch": 0, "loss": 0.5,
                                     "samples_per_sec": 10.0, "at": 1_790_000_000 + step}])

    def put(self, path: str, body: bytes):
        return self.client.generic("PUT", f"/api/v1/agent/assignments/{self.a.pk}/{path}", body,
                                   content_type="application/octet-stream",
                                   HTTP_AUTHORIZATION=f"Bearer {self.token}",
                                   HTTP_X_CONTENT_SHA256=hashlib.sha256(body).hexdigest())

    def checkpoint(self, step: int, body: bytes, *, commit: bool = True):
        response = self.put(f"checkpoints/{step}/", body)
        if response.status_code == 201 and commit:
            self.say("checkpoint", step=step, sha256=hashlib.sha256(body).hexdigest(), bytes=len(body))
        return response

    def get_checkpoint(self, step: int):
        return self.client.get(f"/api/v1/agent/assignments/{self.a.pk}/checkpoints/{step}/",
                               HTTP_AUTHORIZATION=f"Bearer {self.token}")

    def finish(self, *, step: int, artifact: bytes | None = None, **fields) -> None:
        sha = None
        if artifact is not None:
            assert self.put("artifact/", artifact).status_code == 201
            sha = hashlib.sha256(artifact).hexdigest()
        self.say("assignment.finished", status="succeeded", step=step, artifact_sha256=sha, **fields)


def corrupted_replay(runner: replay.Replayer, start: dict, *, to_step: int, bad_rank: int,
                     witness: replay.Witness | None = None) -> dict:
    """The model a DDP group reaches when one rank sends the negation of its gradients (a
    corrupting peer): replay.Replayer.replay with one rank's share flipped. Its checkpoints
    look the same whichever node did it; `witness` sees what each rank's commitments say
    (the runtime's hook commits what the rank sends)."""
    job, plan, splits = runner.job, runner.plan, runner.splits
    model, loss_fn = runner._model(start)
    opt = schedule.optimizer(model, job.params)
    schedule.load_optimizer(opt, start["optimizer"], job.params)
    model.train()
    params = list(model.parameters())
    if witness is not None:
        witness.start_digest = commitments.state_digest(model.state_dict()).hex()
    for step in range(int(start["step"]), to_step):
        if witness is not None:
            witness.parameters(step, params)
        total = [torch.zeros_like(p) for p in params]
        for rank in range(job.world_size):
            indices = schedule.rank_indices(len(splits.x_train), plan, world=job.world_size, rank=rank,
                                            seed=job.seed, step=step)
            torch.manual_seed(schedule.step_seed(job.seed, rank, step))
            model.zero_grad(set_to_none=True)
            loss_fn(model(splits.x_train[indices]), splits.y_train[indices]).backward()
            sign = -1.0 if rank == bad_rank else 1.0
            if witness is not None:
                witness.gradients([sign * p.grad for p in params])
            for acc, p in zip(total, params, strict=True):
                acc.add_(sign * p.grad / job.world_size)
        for p, g in zip(params, total, strict=True):
            p.grad = g
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def commitments_body(witness: replay.Witness) -> bytes:
    """What every node's leader writes (workers/training/commitments.py): one JSON line a
    step with every rank's projections."""
    world = len(witness.rows[0]["grad"])
    return "".join(json.dumps({"step": row["step"], "grad": row["grad"], "param": [row["param"]] * world,
                               **({"model": [witness.start_digest] * world} if i == 0 else {})}) + "\n"
                   for i, row in enumerate(witness.rows)).encode()


def trained_segment(client, parts: list[Assignment], *, world: int, corrupt_rank: int | None = None,
                    witness: replay.Witness | None = None) -> dict:
    """Steps 0..5 trained honestly from the job's initial state, steps 5..10 honestly or with
    `corrupt_rank`'s gradients flipped, both checkpointed by rank 0; returns the model state
    at step 10. `witness` records each rank's commitments of steps 5..10. (The step-5
    checkpoint keeps the optimizer's initial state: the replay compares parameters, and
    steps 5..10 train from what that checkpoint holds.)"""
    runner, _, opt = fresh(world=world)
    initial = runner.initial_state()
    start = {"step": 5, "model": runner.replay(initial, to_step=5), "optimizer": initial["optimizer"]}
    end = (corrupted_replay(runner, start, to_step=10, bad_rank=corrupt_rank, witness=witness)
           if corrupt_rank is not None else runner.replay(start, to_step=10, witness=witness))
    rank0 = Agent(client, parts[0])
    rank0.progress(5)
    assert rank0.checkpoint(5, checkpoint_bytes(5, start["model"], start["optimizer"])).status_code == 201
    rank0.progress(10)
    assert rank0.checkpoint(10, checkpoint_bytes(10, end, opt.state_dict())).status_code == 201
    return end
