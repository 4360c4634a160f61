"""One training process (one rank) of a job, started by torch.distributed's elastic launch.

    python -m workers.training.run SPEC.json

SPEC.json (written by the agent): template or bundle ({path, entry}: the job's own task,
docs/tasks.md) and data_dir, params, dataset, workdir, backend, resume_from,
pg_timeout_s, verify (`{replay_share, segments}`: checkpoint often enough for the platform's
replay spot checks), and for multi-node jobs sync,
nnodes, node_rank and (DiLoCo) outer, member, peer_timeout_s; job_secret (hex, from the
platform: the DiLoCo exchange's HMAC key and the rendezvous store's namespace); benchmarks
may add max_steps, report_every and eval_every. Rank 0 writes
progress, checkpoint and result events to workdir/events.jsonl; every node's leader writes
`alive` events with its own step there, at least every LIVENESS_EVERY_S while steps complete.
Randomness is a function of (seed, rank, step), so a run resumed from a checkpoint, or
replayed by a verifier (replay.py), follows exactly the same path: both take the data
order, seeds and optimizer from schedule.py. COMPUTEMESH_FAULTS (faults.py) makes a test
run misbehave on purpose.

Two ways to synchronise several nodes (the job's `sync`):
- ddp: one process group over every rank of every node; gradients all-reduced each step.
- diloco: each node runs its own process group (DDP among its ranks, launched standalone);
  every H steps the node leaders exchange pseudo-gradients through `outer.py`, and every
  rank continues from the new global model. See docs/architecture.md.
"""

from __future__ import annotations

import faulthandler
import hashlib
import hmac
import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from . import checkpoint, commitments, diloco, faults, outer, schedule
from . import task as tasks
from .events import EventWriter

REPORTS_PER_RUN = 400  # progress points per run, at most (plus one per checkpoint)
PAUSE_CHECK_EVERY = 10  # steps between checks of the agent's pause file (budget safety)
# DiLoCo: a node's leader may wait this long on the other nodes (a whole round of the
# slowest, or the start of a replacement), so its own ranks wait as long for it.
OUTER_WAIT_S = 900
STARTUP_TIMEOUT_S = 120  # the host waits this long for the other leaders before step 1
# Every node's leader tells its agent that its ranks still complete steps at least this often
# (time, not steps: a cheap file append however fast or slow the steps are).
LIVENESS_EVERY_S = 2.0
DIGEST_BYTES = 32  # a SHA-256: each rank's fixed-size slot in the final digest exchange


def param_digest(model: torch.nn.Module) -> str:
    return commitments.state_digest(model.state_dict()).hex()


class DiLoCoNode:
    """This node's part of DiLoCo. Its leader (local rank 0) keeps the global parameters
    and the outer optimizer and talks to the other nodes (node rank 0's leader hosts the
    exchange); then every rank of the node continues from the new global model, handed
    over by a broadcast inside the node."""

    def __init__(self, *, spec: dict, sync: diloco.SyncConfig, model: torch.nn.Module, leader: bool,
                 node_rank: int, nnodes: int, start_step: int, outer_state: dict | None, log):
        self.sync, self.model, self.leader = sync, model, leader
        self.node_rank, self.nnodes, self.log = node_rank, nnodes, log
        self.params = list(model.parameters())
        self.shapes = [p.shape for p in self.params]
        self.global_params: list[torch.Tensor] = []
        self.opt = diloco.OuterNesterov(sync.outer_lr, sync.outer_momentum)
        self.opt.load_state_dict(outer_state)
        self.link: outer.OuterHost | outer.OuterMember | None = None
        if not leader:
            return
        self.global_params = [p.detach().cpu().float().clone() for p in self.params]
        address = spec["outer"]
        secret = job_secret(spec)  # every message between the nodes carries its HMAC
        if node_rank == 0:
            self.link = outer.OuterHost(port=int(address["port"]), precision=sync.precision,
                                        shapes=self.shapes, log=log, secret=secret,
                                        peer_timeout_s=float(spec.get("peer_timeout_s", 15)))
        else:
            self.link = outer.OuterMember(host=address["host"], port=int(address["port"]),
                                          precision=sync.precision, shapes=self.shapes,
                                          node_rank=node_rank, member=str(spec.get("member", "")),
                                          digest=self.digest(), step=start_step, log=log,
                                          advertise_host=spec.get("advertise_host"), secret=secret,
                                          peer_timeout_s=float(spec.get("peer_timeout_s", 15)))

    @property
    def sent(self) -> int:
        return self.link.sent if self.link is not None else 0

    def digest(self) -> str:
        digest = hashlib.sha256()
        for tensor in self.global_params:
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _state(self) -> tuple[dict, bytes]:
        tensors = self.global_params + (self.opt.buffers or [])
        return {"momentum": self.opt.buffers is not None}, diloco.encode(tensors, "fp32")

    @torch.no_grad()
    def _publish(self) -> None:
        """Every rank of the node takes the leader's global parameters."""
        for param, value in zip(self.params, self.global_params or self.params, strict=True):
            if self.leader:
                param.copy_(value.to(param.device))
            dist.broadcast(param.data, src=0)

    def start(self, step: int) -> int | None:
        """Join the other nodes. Returns the step to train from, or None when the job ended
        before this node could join."""
        status = torch.tensor([step, 0], dtype=torch.long)
        if isinstance(self.link, outer.OuterHost):
            self.link.wait_for_joiners(self.nnodes - 1, STARTUP_TIMEOUT_S)
            self.link.admit(round_=step, step=step, digest=self.digest(), state=self._state)
        elif isinstance(self.link, outer.OuterMember):
            admitted = self.link.join()
            if admitted is None:
                status[1] = 1
            else:
                if admitted["params"] is not None:
                    self.global_params = admitted["params"]
                    self.opt.load_state_dict({"buffers": admitted["momentum"]})
                status[0] = admitted["step"]
                self.log(f"outer: node rank {self.node_rank} joined at step {admitted['step']}")
        if status.device.type != self.params[0].device.type:
            status = status.to(self.params[0].device)
        dist.broadcast(status, src=0)
        if int(status[1]):
            return None
        self._publish()
        return int(status[0])

    def outer_step(self, step: int, *, final: bool) -> dict | None:
        """Average the nodes' pseudo-gradients Δ = θ_global − θ_local and apply the outer
        Nesterov step; every rank continues from the new global parameters."""
        header = None
        if self.leader:
            local = [p.detach().cpu().float() for p in self.params]
            pseudo = [g - x for g, x in zip(self.global_params, local, strict=True)]
            average, header = self.link.exchange(step, pseudo, final=final)
            self.opt.step(self.global_params, average)
            if isinstance(self.link, outer.OuterHost):
                self.link.admit(round_=step, step=step, digest=self.digest(), state=self._state,
                                finished=final)
                if final:
                    self.link.finish(step)
        self._publish()
        return header

    def close(self) -> None:
        if self.link is not None:
            self.link.close()


def gather_digests(own: bytes, *, group_size: int, device: torch.device) -> list[str]:
    """Every rank's 32-byte SHA-256, gathered as a fixed-shape uint8 tensor, hex-encoded.

    Never `all_gather_object`: it unpickles each rank's contribution, so a hostile peer's
    object ran its command in rank 0's process (issue 13). A peer can only fill its own 32
    bytes here, and they are only ever read as data."""
    if len(own) != DIGEST_BYTES:
        raise ValueError(f"a digest is {DIGEST_BYTES} bytes, not {len(own)}")
    mine = torch.tensor(list(own), dtype=torch.uint8, device=device)
    parts = [torch.zeros(DIGEST_BYTES, dtype=torch.uint8, device=device) for _ in range(group_size)]
    dist.all_gather(parts, mine)
    return [bytes(part.cpu().tolist()).hex() for part in parts]


def _emit_log(message: str) -> None:
    print(message, flush=True)


def job_secret(spec: dict) -> bytes | None:
    """The per-job secret the platform gave this job's agents only (hex), if any."""
    value = spec.get("job_secret")
    return bytes.fromhex(value) if value else None


def store_prefix(secret: bytes | None, restart: str) -> str:
    """The rendezvous store's namespace for this restart. Under the job's secret its name
    cannot be guessed (the store lists no keys), so a stranger who reaches the store cannot
    plant the group's keys (gloo's peer addresses) for this job."""
    if secret is None:
        return f"computemesh/attempt_{restart}"
    tag = hmac.new(secret, b"computemesh-rdzv", hashlib.sha256).hexdigest()[:32]
    return f"computemesh/{tag}/attempt_{restart}"


def init_process_group(backend: str, *, timeout: timedelta, secret: bytes | None = None) -> None:
    """The group over torchrun's store, in a namespace of this restart's own.

    Under a static rendezvous (a node's ranks, or several nodes' over --master-addr) every
    rank is a client of the one store torchrun hosts for its whole life, and torch's env://
    rendezvous does not prefix its keys per attempt (it assumes a new store per restart).
    A group restarted after a rank died then read the dead ranks' gloo addresses: here
    8 of 15 restarts came up, 6 failed again, 1 hung in connectFullMesh."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or restart is None:
        dist.init_process_group(backend, timeout=timeout)
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=dist.PrefixStore(store_prefix(secret, restart), store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                            timeout=timeout)


def main(spec_path: str) -> int:
    # `kill -USR1 <pid>` prints every thread's stack to the log: how to see where a hung rank is.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    spec = json.loads(Path(spec_path).read_text())
    sync = diloco.SyncConfig.from_spec(spec.get("sync"))
    nnodes, node_rank = int(spec.get("nnodes", 1)), int(spec.get("node_rank", 0))
    # DiLoCo across nodes: this process group is the node's own (torchrun --standalone);
    # the data shard and the randomness still follow the rank across the whole job.
    hierarchical = sync.mode == "diloco" and nnodes > 1 and bool(spec.get("outer"))
    local_group_rank, group_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if hierarchical:
        nproc = group_size
        rank, world = node_rank * nproc + local_group_rank, nnodes * nproc
    else:
        rank, world = local_group_rank, group_size
        nproc = int(os.environ.get("LOCAL_WORLD_SIZE") or max(1, group_size // nnodes))
    leader = local_group_rank == 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    backend = spec.get("backend", "gloo")
    device = torch.device(f"cuda:{local_rank}" if backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Survivors of a dead peer fail after this instead of gloo's default 30 minutes.
    pg_timeout = spec.get("pg_timeout_s", 60)
    init_process_group(backend, timeout=timedelta(seconds=max(pg_timeout, OUTER_WAIT_S)
                                                  if hierarchical else pg_timeout),
                       secret=job_secret(spec))

    workdir = Path(spec["workdir"])
    ckpt_dir = workdir / "checkpoints"
    events = EventWriter(workdir / "events.jsonl" if rank == 0 else None)
    # Every node's leader (its local rank 0) records its outer rounds and, at the end, the
    # bytes its node sent: the agent forwards only rank 0's progress.
    node_leader = local_rank == 0
    node_events = events if rank == 0 else EventWriter(
        workdir / "events.jsonl" if nnodes > 1 and node_leader else None)
    template, params = spec.get("template"), spec["params"]
    seed = int(params.get("seed", 0))
    try:
        # The job's task (a template's or the consumer's own, task.py): seed, data, model.
        prepared = tasks.prepare(spec)
    except (tasks.DatasetError, tasks.TaskError) as exc:
        # The consumer's data or code, not the node, is at fault: say so, so the job fails fast.
        reason = "dataset" if isinstance(exc, tasks.DatasetError) else "task"
        events.emit("failed", reason=reason, message=str(exc))
        events.close()
        dist.destroy_process_group()
        return 3
    task, model, train = prepared.task, prepared.model, prepared.train
    model.to(device)
    optimizer = task.optimizer(model)
    misbehave = faults.from_env()

    plan = schedule.Plan.of(n_train=prepared.n_train, world=world, params=params,
                            max_steps=spec.get("max_steps"))
    batch, steps_per_epoch, total_steps = plan.batch, plan.steps_per_epoch, plan.total_steps
    sampler = schedule.sampler(prepared.n_train, world=world, rank=rank, seed=seed)

    # Resume: a local checkpoint from an earlier attempt of this process group wins over
    # the one the platform handed over (it is newer).
    resume = checkpoint.latest(ckpt_dir) or (Path(spec["resume_from"]) if spec.get("resume_from") else None)
    start_step = 0
    outer_state = None
    if resume is not None:
        try:
            state = checkpoint.load(resume)
            model.load_state_dict(state["model"])
            tasks.load_optimizer(optimizer, state["optimizer"])
            start_step = int(state["step"])
        except Exception as exc:
            if spec.get("resume_from") is None or resume != Path(spec["resume_from"]):
                raise  # this node's own local checkpoint
            # Another provider's checkpoint that does not load is its author's fault, not this
            # node's: say so (error_kind "resume"), so the platform does not blame this node.
            node_events.emit("failed", reason="resume", message=f"the resume checkpoint does not load: {exc}")
            events.close()
            dist.destroy_process_group()
            return 4
        outer_state = state.get("outer")

    node = None
    if hierarchical:
        node = DiLoCoNode(spec=spec, sync=sync, model=model, leader=leader, node_rank=node_rank,
                          nnodes=nnodes, start_step=start_step, outer_state=outer_state, log=_emit_log)
        joined_at = node.start(start_step)
        if joined_at is None:  # the others finished before this node could join
            _emit_log(f"outer: the job finished before node rank {node_rank} could join")
            node.close()
            node_events.close()
            dist.barrier()
            dist.destroy_process_group()
            return 0
        start_step = joined_at
    ddp = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    # DDP across nodes: every rank commits to its own gradient at every step, so that a
    # replay can name the node whose share was wrong (commitments.py).
    committer = None
    if nnodes > 1 and node is None:
        committer = commitments.Committer(model, seed=seed, world=world, device=device)
        ddp.register_comm_hook(None, committer.hook)
    events.emit("started", step=start_step, total_steps=total_steps, world_size=world,
                resumed_from=str(resume) if resume else None, steps_per_epoch=steps_per_epoch,
                sync=sync.as_dict() if hierarchical else {"mode": "ddp"})
    # The agent's stall watchdog sees only its own node's file. Without this a node holding no
    # global rank 0 wrote nothing until its end, and its agent stopped it as hung after the
    # stall timeout (180 s) while the job trained. A step completes only when its collectives
    # do, so a node stuck in one goes quiet here too.
    node_events.emit("alive", step=start_step)
    alive_at = time.monotonic()

    # Bytes this node sends to the other nodes in this attempt, and what DDP would send
    # for the same steps (the fp32 gradients' ring all-reduce, one hop out of each node).
    param_bytes = 4 * sum(p.numel() for p in model.parameters())
    ddp_step_bytes = diloco.ddp_node_bytes_per_step(param_bytes, nnodes=nnodes, nproc_per_node=nproc)

    def comm(step_now: int) -> dict:
        if nnodes <= 1:
            return {}
        ddp_bytes = (step_now - start_step) * ddp_step_bytes
        return {"comm_bytes": node.sent if node else ddp_bytes, "comm_bytes_ddp": ddp_bytes}

    eval_every = int(spec.get("eval_every") or 0)  # benchmarks: held-out loss along the way
    eval_seconds = 0.0

    def trace_eval(step_now: int) -> None:
        nonlocal eval_seconds
        began = time.perf_counter()
        value = tasks.eval_loss(task, model, prepared.held_out, device)
        eval_seconds += time.perf_counter() - began
        events.emit("eval", step=step_now, loss=value, eval_s=eval_seconds, **comm(step_now))

    # Budget safety: the agent creates this file when the platform says `assignment.pause`.
    # Ranks agree on the step to stop at (a MAX all-reduce every PAUSE_CHECK_EVERY steps,
    # decided by step number like the reports), then rank 0 checkpoints there and every node's leader
    # writes paused.json for its agent. DiLoCo nodes are stopped by the platform instead.
    pause_file = Path(spec["pause_file"]) if spec.get("pause_file") and node is None else None
    paused = False

    def pause_agreed() -> bool:
        flag = torch.tensor([1.0 if pause_file.exists() else 0.0], device=device)
        if group_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    every = plan.checkpoint_every(params, spec.get("verify"))
    inner = sync.inner_steps
    last_checkpoint = start_step
    # Reporting all-reduces the loss, so every rank must decide it the same way: by step
    # number, never by its own clock (a mismatch hangs or corrupts the collectives).
    report_every = int(spec.get("report_every") or max(1, total_steps // REPORTS_PER_RUN))
    # A scalar all-reduce every PAUSE_CHECK_EVERY steps rather than every step; the platform
    # asks BUDGET_PAUSE_LEAD_S ahead, which covers that many steps of most jobs.
    pause_every = PAUSE_CHECK_EVERY
    step, window_start, window_steps = start_step, time.perf_counter(), 0
    while step < total_steps:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch)
        for indices in schedule.batches(sampler, batch)[step % steps_per_epoch:steps_per_epoch]:
            torch.manual_seed(schedule.step_seed(seed, rank, step))
            tasks.set_learning_rate(task, optimizer, step, total_steps)
            batch_data = tasks.to_device(task.batch(train, indices), device)
            if committer is not None:
                committer.begin(step)
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(ddp, batch_data)
            (-loss if misbehave.corrupt_gradients else loss).backward()  # a test-only cheat
            if committer is not None:
                committer.end()
            if not misbehave.skip(step):  # a test-only cheat: the step is still reported
                optimizer.step()
            step += 1
            window_steps += 1
            if node_leader and time.monotonic() - alive_at >= LIVENESS_EVERY_S:
                node_events.emit("alive", step=step)
                alive_at = time.monotonic()
            boundary = node is not None and (step % inner == 0 or step == total_steps)
            if boundary:
                header = node.outer_step(step, final=step == total_steps)
                if leader:
                    digest = param_digest(model)
                    sent = comm(step)
                    _emit_log(f"outer round {-(-step // inner)} step {step}: nodes "
                              f"{','.join(header['contributors'])} · global sha256 {digest} · "
                              f"sent {sent.get('comm_bytes', 0)} B (DDP {sent.get('comm_bytes_ddp', 0)} B)")
                    node_events.emit("outer", step=step, round=-(-step // inner), sha256=digest,
                                     contributors=header["contributors"], **sent)
                if eval_every and rank == 0:
                    trace_eval(step)
            elif node is None and eval_every and rank == 0 and step % eval_every == 0:
                trace_eval(step)
            now = time.perf_counter()
            if node is None:
                checkpoint_due = step % every == 0 or step == total_steps
            else:  # only the global model after an outer step is worth keeping
                checkpoint_due = boundary and (step // every > last_checkpoint // every
                                               or step == total_steps)
            if pause_file is not None and step < total_steps and step % pause_every == 0:
                paused = pause_agreed()
                checkpoint_due = checkpoint_due or paused
            if step % report_every == 0 or checkpoint_due:
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss, op=dist.ReduceOp.AVG if backend == "nccl" else dist.ReduceOp.SUM)
                if backend != "nccl":
                    mean_loss /= group_size
                elapsed = max(now - window_start, 1e-9)
                events.emit("progress", step=step, total_steps=total_steps, epoch=epoch,
                            loss=float(mean_loss), samples_per_sec=window_steps * batch * world / elapsed,
                            **comm(step))
                window_start, window_steps = now, 0
            if checkpoint_due and committer is not None:  # every rank: one all-gather
                written = committer.flush(writer=workdir / commitments.FILE if local_rank == 0 else None)
                if written is not None:
                    first, offset, length = written
                    node_events.emit("commitments", step=step, from_step=first,
                                     path=str(workdir / commitments.FILE), offset=offset, length=length)
            if checkpoint_due and rank == 0:
                meta = {"template": template, "epoch": epoch}
                if node is not None:
                    meta.update(outer=node.opt.state_dict(), sync=sync.as_dict())
                path, sha = checkpoint.save(ckpt_dir, step=step, model=model, optimizer=optimizer,
                                            meta=meta)
                last_checkpoint = step
                events.emit("checkpoint", step=step, path=str(path), sha256=sha,
                            bytes=path.stat().st_size)
            if step >= total_steps or paused:
                break
        if paused:
            break

    if paused:
        # The checkpoint above is this step's; the agent uploads it, then reports the pause.
        # One file per node (its agent reads it): local rank 0, not `leader` (with DDP across
        # nodes that is global rank 0 only).
        if local_rank == 0:
            (workdir / "paused.json").write_text(json.dumps({"step": step, "total_steps": total_steps}))
        events.close()
        dist.barrier()
        dist.destroy_process_group()
        return 0
    if node is not None:
        node.close()
    if rank != 0 and node_leader and nnodes > 1:  # rank 0's own go with `finished`
        node_events.emit("node_finished", step=step, **comm(step))
    sent = misbehave.digest_payload(rank, bytes.fromhex(param_digest(model)))
    digests = gather_digests(sent, group_size=group_size, device=device)
    if rank == 0:
        metric, value = tasks.headline(task, model, prepared.held_out, device)
        value = misbehave.report(metric, value)  # a test-only lie (faults.py)
        artifact = workdir / "model.pt"
        torch.save({"template": template, "task": tasks.entry_of(spec), "params": params,
                    "model": model.state_dict(),
                    "metric": {metric: value}}, artifact)
        events.emit("finished", step=step, total_steps=total_steps, metric=metric, value=value,
                    artifact=str(artifact), sha256=checkpoint.sha256_file(artifact),
                    param_digests=digests, **comm(step))
    events.close()
    if node_events is not events:
        node_events.close()
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1])
    # Everything is written and closed and the group destroyed: leave without the
    # interpreter's teardown. A rank whose work was done now and then aborted on its way out
    # ("terminate called without an active exception": a joinable C++ thread destroyed;
    # about 1 run in 50 on CPU here), and torchrun then restarted a finished node. An
    # exception still exits the usual way, with its traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
