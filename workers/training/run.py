"""One training process (one rank) of a job, started by torch.distributed's elastic launch.

    python -m workers.training.run SPEC.json

SPEC.json (written by the agent): template or bundle ({path, entry}: the job's own task,
docs/tasks.md) and data_dir, weights ({path, sha256}: a fine-tune's start), params, dataset,
workdir, backend, resume_from, pg_timeout_s, verify (`{replay_share, segments}`: checkpoint
often enough for the platform's replay spot checks), and for multi-node jobs sync,
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

The process group's setup is group.py, a DiLoCo node's part diloco_node.py; this module is
the rank's trainer (its topology, the loop and its one teardown), a little over 400 lines
because the loop's steps (report, checkpoint, pause, outer round, finish) read best together.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from . import checkpoint, commitments, diloco, faults, schedule
from . import task as tasks
from . import weights as start_weights
from .diloco_node import DiLoCoNode, param_digest
from .events import EventWriter
from .group import gather_digests, init_process_group, job_secret

REPORTS_PER_RUN = 400  # progress points per run, at most (plus one per checkpoint)
PAUSE_CHECK_EVERY = 10  # steps between checks of the agent's pause file (budget safety)
# DiLoCo: a node's leader may wait this long on the other nodes (a whole round of the
# slowest, or the start of a replacement), so its own ranks wait as long for it.
OUTER_WAIT_S = 900
# Every node's leader tells its agent that its ranks still complete steps at least this often
# (time, not steps: a cheap file append however fast or slow the steps are).
LIVENESS_EVERY_S = 2.0


def _emit_log(message: str) -> None:
    print(message, flush=True)


@dataclass(frozen=True)
class Topology:
    """Where this process stands: its rank in the whole job (its data shard and its
    randomness) and in its process group (the collectives)."""

    sync: diloco.SyncConfig
    nnodes: int
    node_rank: int
    # DiLoCo across nodes: this process group is the node's own (torchrun --standalone);
    # the data shard and the randomness still follow the rank across the whole job.
    hierarchical: bool
    rank: int
    world: int
    group_rank: int
    group_size: int
    nproc: int  # ranks per node
    local_rank: int
    backend: str
    device: torch.device

    @classmethod
    def of(cls, spec: dict) -> Topology:
        sync = diloco.SyncConfig.from_spec(spec.get("sync"))
        nnodes, node_rank = int(spec.get("nnodes", 1)), int(spec.get("node_rank", 0))
        hierarchical = sync.mode == "diloco" and nnodes > 1 and bool(spec.get("outer"))
        group_rank, group_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if hierarchical:
            nproc = group_size
            rank, world = node_rank * nproc + group_rank, nnodes * nproc
        else:
            rank, world = group_rank, group_size
            nproc = int(os.environ.get("LOCAL_WORLD_SIZE") or max(1, group_size // nnodes))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        backend = spec.get("backend", "gloo")
        device = torch.device(f"cuda:{local_rank}" if backend == "nccl" else "cpu")
        return cls(sync=sync, nnodes=nnodes, node_rank=node_rank, hierarchical=hierarchical, rank=rank,
                   world=world, group_rank=group_rank, group_size=group_size, nproc=nproc,
                   local_rank=local_rank, backend=backend, device=device)

    @property
    def leader(self) -> bool:
        """Rank 0 of this process group (with DDP across nodes: global rank 0 only)."""
        return self.group_rank == 0

    @property
    def node_leader(self) -> bool:
        """Rank 0 of this node: it writes what this node's agent reads."""
        return self.local_rank == 0


class Trainer:
    """One rank's run of a job: prepare, resume, train, checkpoint, then finish or pause.
    `run` returns the exit code and tears down once, however it ends."""

    def __init__(self, spec: dict, topo: Topology):
        self.spec, self.t = spec, topo
        self.workdir = Path(spec["workdir"])
        self.ckpt_dir = self.workdir / "checkpoints"
        self.template, self.params = spec.get("template"), spec["params"]
        self.seed = int(self.params.get("seed", 0))
        self.events = EventWriter(self.workdir / "events.jsonl" if topo.rank == 0 else None)
        # Every node's leader (its local rank 0) records its outer rounds and, at the end, the
        # bytes its node sent: the agent forwards only rank 0's progress.
        self.node_events = self.events if topo.rank == 0 else EventWriter(
            self.workdir / "events.jsonl" if topo.nnodes > 1 and topo.node_leader else None)
        self.misbehave = faults.from_env()
        self.node: DiLoCoNode | None = None
        self.node_closed = False
        self.committer: commitments.Committer | None = None
        self.resume: Path | None = None
        self.start_step = self.step = 0
        self.paused = False
        self.eval_seconds = 0.0

    # --- the one teardown ----------------------------------------------------------
    def run(self) -> int:
        code = None
        try:
            code = self._run()
            return code
        finally:
            self._teardown(code)

    def _teardown(self, code: int | None) -> None:
        """Close what is open; when the run returned (not raised), leave the process group:
        after a barrier when it ended well (every rank gets there), at once when it failed
        (the other ranks may not). A rank that raised leaves the group to the process's end,
        as before: it may be stuck in a collective."""
        self._close_node()
        self.events.close()
        if self.node_events is not self.events:
            self.node_events.close()
        if code is None:
            return
        if code == 0:
            dist.barrier()
        dist.destroy_process_group()

    def _close_node(self) -> None:
        """Close the DiLoCo link once (its byte count stays readable)."""
        if self.node is not None and not self.node_closed:
            self.node.close()
            self.node_closed = True

    def _run(self) -> int:
        failed = self._prepare() or self._resume()
        if failed:
            return failed
        if self.t.hierarchical and not self._join():
            return 0
        self._wrap()
        self._train()
        if self.paused:
            self._write_paused()
        else:
            self._finish()
        return 0

    # --- before the first step ------------------------------------------------------
    def _prepare(self) -> int | None:
        """The job's task (a template's or the consumer's own, task.py): seed, data, model
        (a fine-tune's weights loaded into it); 3 when the consumer's data, code or weights,
        not the node, are at fault (the job fails fast)."""
        t = self.t
        try:
            prepared = tasks.prepare(self.spec)
        except (tasks.DatasetError, tasks.TaskError, start_weights.WeightsError) as exc:
            reason = ("dataset" if isinstance(exc, tasks.DatasetError) else
                      "weights" if isinstance(exc, start_weights.WeightsError) else "task")
            self.events.emit("failed", reason=reason, message=str(exc))
            return 3
        self.prepared = prepared
        self.task, self.model, self.train_data = prepared.task, prepared.model, prepared.train
        self.model.to(t.device)
        self.optimizer = self.task.optimizer(self.model)
        self.plan = schedule.Plan.of(n_train=prepared.n_train, world=t.world, params=self.params,
                                     max_steps=self.spec.get("max_steps"))
        self.sampler = schedule.sampler(prepared.n_train, world=t.world, rank=t.rank, seed=self.seed)
        return None

    def _resume(self) -> int | None:
        """Load the checkpoint to start from: a local one from an earlier attempt of this
        process group wins over the one the platform handed over (it is newer). 4 when the
        platform's does not load: its author's fault, not this node's (error_kind "resume")."""
        spec = self.spec
        handed = Path(spec["resume_from"]) if spec.get("resume_from") else None
        self.resume = checkpoint.latest(self.ckpt_dir) or handed
        self.outer_state = None
        if self.resume is None:
            return None
        try:
            state = checkpoint.load(self.resume)
            self.model.load_state_dict(state["model"])
            tasks.load_optimizer(self.optimizer, state["optimizer"])
            self.start_step = int(state["step"])
        except Exception as exc:
            if handed is None or self.resume != handed:
                raise  # this node's own local checkpoint
            self.node_events.emit("failed", reason="resume",
                                  message=f"the resume checkpoint does not load: {exc}")
            return 4
        self.outer_state = state.get("outer")
        return None

    def _join(self) -> bool:
        """DiLoCo: join the other nodes; False when the job ended before this node could."""
        t = self.t
        self.node = DiLoCoNode(spec=self.spec, sync=t.sync, model=self.model, leader=t.leader,
                               node_rank=t.node_rank, nnodes=t.nnodes, start_step=self.start_step,
                               outer_state=self.outer_state, log=_emit_log)
        joined_at = self.node.start(self.start_step)
        if joined_at is None:
            _emit_log(f"outer: the job finished before node rank {t.node_rank} could join")
            return False
        self.start_step = joined_at
        return True

    def _wrap(self) -> None:
        t, plan = self.t, self.plan
        self.ddp = DDP(self.model, device_ids=[t.local_rank] if t.device.type == "cuda" else None)
        # DDP across nodes: every rank commits to its own gradient at every step, so that a
        # replay can name the node whose share was wrong (commitments.py).
        if t.nnodes > 1 and self.node is None:
            self.committer = commitments.Committer(self.model, seed=self.seed, world=t.world, device=t.device)
            self.ddp.register_comm_hook(None, self.committer.hook)
        self.events.emit("started", step=self.start_step, total_steps=plan.total_steps, world_size=t.world,
                         resumed_from=str(self.resume) if self.resume else None,
                         steps_per_epoch=plan.steps_per_epoch,
                         sync=t.sync.as_dict() if t.hierarchical else {"mode": "ddp"})
        # The agent's stall watchdog sees only its own node's file. Without this a node holding
        # no global rank 0 wrote nothing until its end, and its agent stopped it as hung after
        # the stall timeout (180 s) while the job trained. A step completes only when its
        # collectives do, so a node stuck in one goes quiet here too.
        self.node_events.emit("alive", step=self.start_step)
        self.alive_at = time.monotonic()
        # Bytes this node sends to the other nodes in this attempt, and what DDP would send
        # for the same steps (the fp32 gradients' ring all-reduce, one hop out of each node).
        param_bytes = 4 * sum(p.numel() for p in self.model.parameters())
        self.ddp_step_bytes = diloco.ddp_node_bytes_per_step(param_bytes, nnodes=t.nnodes,
                                                             nproc_per_node=t.nproc)
        self.eval_every = int(self.spec.get("eval_every") or 0)  # benchmarks: held-out loss
        # Budget safety: the agent creates this file when the platform says `assignment.pause`.
        # Ranks agree on the step to stop at (a MAX all-reduce every PAUSE_CHECK_EVERY steps,
        # decided by step number like the reports: a scalar all-reduce then rather than every
        # step; the platform asks BUDGET_PAUSE_LEAD_S ahead, which covers that many steps of
        # most jobs), then rank 0 checkpoints there and every node's leader writes paused.json
        # for its agent. DiLoCo nodes are stopped by the platform instead.
        pause = self.spec.get("pause_file")
        self.pause_file = Path(pause) if pause and self.node is None else None
        self.every = plan.checkpoint_every(self.params, self.spec.get("verify"))
        self.last_checkpoint = self.start_step
        # Reporting all-reduces the loss, so every rank must decide it the same way: by step
        # number, never by its own clock (a mismatch hangs or corrupts the collectives).
        self.report_every = int(self.spec.get("report_every") or max(1, plan.total_steps // REPORTS_PER_RUN))

    # --- training -------------------------------------------------------------------
    def _train(self) -> None:
        plan = self.plan
        self.step, self.window_start, self.window_steps = self.start_step, time.perf_counter(), 0
        while self.step < plan.total_steps:
            epoch = self.step // plan.steps_per_epoch
            self.sampler.set_epoch(epoch)
            for indices in schedule.batches(self.sampler, plan.batch)[self.step % plan.steps_per_epoch:
                                                                        plan.steps_per_epoch]:
                loss = self._train_step(indices)
                if self._after_step(epoch, loss):
                    return

    def _train_step(self, indices) -> torch.Tensor:
        t, step, task = self.t, self.step, self.task
        torch.manual_seed(schedule.step_seed(self.seed, t.rank, step))
        tasks.set_learning_rate(task, self.optimizer, step, self.plan.total_steps)
        batch_data = tasks.to_device(task.batch(self.train_data, indices), t.device)
        if self.committer is not None:
            self.committer.begin(step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = task.loss(self.ddp, batch_data)
        (-loss if self.misbehave.corrupt_gradients else loss).backward()  # a test-only cheat
        if self.committer is not None:
            self.committer.end()
        if not self.misbehave.skip(step):  # a test-only cheat: the step is still reported
            self.optimizer.step()
        self.step += 1
        self.window_steps += 1
        return loss

    def _after_step(self, epoch: int, loss: torch.Tensor) -> bool:
        """Liveness, outer rounds, evaluation, progress, commitments and checkpoints after a
        step; True when training stops here (the last step, or a pause)."""
        t, step, total = self.t, self.step, self.plan.total_steps
        if t.node_leader and time.monotonic() - self.alive_at >= LIVENESS_EVERY_S:
            self.node_events.emit("alive", step=step)
            self.alive_at = time.monotonic()
        boundary = self.node is not None and (step % t.sync.inner_steps == 0 or step == total)
        if boundary:
            self._outer_round(step)
        periodic = self.node is None and self.eval_every and step % self.eval_every == 0
        if self.eval_every and t.rank == 0 and (boundary or periodic):
            self._trace_eval(step)
        now = time.perf_counter()
        if self.node is None:
            checkpoint_due = step % self.every == 0 or step == total
        else:  # only the global model after an outer step is worth keeping
            checkpoint_due = boundary and (step // self.every > self.last_checkpoint // self.every
                                           or step == total)
        if self.pause_file is not None and step < total and step % PAUSE_CHECK_EVERY == 0:
            self.paused = self._pause_agreed()
            checkpoint_due = checkpoint_due or self.paused
        if step % self.report_every == 0 or checkpoint_due:
            self._report(epoch, loss, now)
        if checkpoint_due:
            self._checkpoint(epoch)
        return step >= total or self.paused

    def _outer_round(self, step: int) -> None:
        assert self.node is not None
        header = self.node.outer_step(step, final=step == self.plan.total_steps)
        if self.t.leader and header is not None:  # the leader's exchange answers
            inner = self.t.sync.inner_steps
            digest = param_digest(self.model)
            sent = self._comm(step)
            _emit_log(f"outer round {-(-step // inner)} step {step}: nodes "
                      f"{','.join(header['contributors'])} · global sha256 {digest} · "
                      f"sent {sent.get('comm_bytes', 0)} B (DDP {sent.get('comm_bytes_ddp', 0)} B)")
            self.node_events.emit("outer", step=step, round=-(-step // inner), sha256=digest,
                                  contributors=header["contributors"], **sent)

    def _comm(self, step_now: int) -> dict:
        if self.t.nnodes <= 1:
            return {}
        ddp_bytes = (step_now - self.start_step) * self.ddp_step_bytes
        return {"comm_bytes": self.node.sent if self.node else ddp_bytes, "comm_bytes_ddp": ddp_bytes}

    def _trace_eval(self, step_now: int) -> None:
        began = time.perf_counter()
        value = tasks.eval_loss(self.task, self.model, self.prepared.held_out, self.t.device)
        self.eval_seconds += time.perf_counter() - began
        self.events.emit("eval", step=step_now, loss=value, eval_s=self.eval_seconds, **self._comm(step_now))

    def _pause_agreed(self) -> bool:
        assert self.pause_file is not None
        flag = torch.tensor([1.0 if self.pause_file.exists() else 0.0], device=self.t.device)
        if self.t.group_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _report(self, epoch: int, loss: torch.Tensor, now: float) -> None:
        t, step = self.t, self.step
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss, op=dist.ReduceOp.AVG if t.backend == "nccl" else dist.ReduceOp.SUM)
        if t.backend != "nccl":
            mean_loss /= t.group_size
        elapsed = max(now - self.window_start, 1e-9)
        self.events.emit("progress", step=step, total_steps=self.plan.total_steps, epoch=epoch,
                         loss=float(mean_loss),
                         samples_per_sec=self.window_steps * self.plan.batch * t.world / elapsed,
                         **self._comm(step))
        self.window_start, self.window_steps = now, 0

    def _checkpoint(self, epoch: int) -> None:
        t, step = self.t, self.step
        if self.committer is not None:  # every rank: one all-gather
            file = self.workdir / commitments.FILE
            written = self.committer.flush(writer=file if t.local_rank == 0 else None)
            if written is not None:
                first, offset, length = written
                self.node_events.emit("commitments", step=step, from_step=first, path=str(file),
                                      offset=offset, length=length)
        if t.rank != 0:
            return
        meta = {"template": self.template, "epoch": epoch}
        if self.node is not None:
            meta.update(outer=self.node.opt.state_dict(), sync=t.sync.as_dict())
        path, sha = checkpoint.save(self.ckpt_dir, step=step, model=self.model, optimizer=self.optimizer,
                                    meta=meta)
        self.last_checkpoint = step
        self.events.emit("checkpoint", step=step, path=str(path), sha256=sha, bytes=path.stat().st_size)

    # --- the end ----------------------------------------------------------------------
    def _write_paused(self) -> None:
        """The checkpoint of this step is written; the agent uploads it, then reports the
        pause. One file per node (its agent reads it): local rank 0, not `leader` (with DDP
        across nodes that is global rank 0 only)."""
        if self.t.local_rank == 0:
            (self.workdir / "paused.json").write_text(json.dumps({"step": self.step,
                                                                 "total_steps": self.plan.total_steps}))

    def _finish(self) -> None:
        """Every rank's parameter digest to rank 0, which evaluates, saves the model and
        reports the result."""
        t, step = self.t, self.step
        self._close_node()
        if t.rank != 0 and t.node_leader and t.nnodes > 1:  # rank 0's own go with `finished`
            self.node_events.emit("node_finished", step=step, **self._comm(step))
        sent = self.misbehave.digest_payload(t.rank, bytes.fromhex(param_digest(self.model)))
        digests = gather_digests(sent, group_size=t.group_size, device=t.device)
        if t.rank != 0:
            return
        metric, value = tasks.headline(self.task, self.model, self.prepared.held_out, t.device)
        value = self.misbehave.report(metric, value)  # a test-only lie (faults.py)
        artifact = self.workdir / "model.pt"
        torch.save({"template": self.template, "task": tasks.entry_of(self.spec), "params": self.params,
                    "model": self.model.state_dict(), "metric": {metric: value}}, artifact)
        self.events.emit("finished", step=step, total_steps=self.plan.total_steps, metric=metric, value=value,
                         artifact=str(artifact), sha256=checkpoint.sha256_file(artifact),
                         param_digests=digests, **self._comm(step))


def main(spec_path: str) -> int:
    # `kill -USR1 <pid>` prints every thread's stack to the log: how to see where a hung rank is.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    spec = json.loads(Path(spec_path).read_text())
    topo = Topology.of(spec)
    # The job's log starts with where each rank runs (the agent redacts the paths).
    _emit_log(f"runtime: rank {topo.rank} of {topo.world} on {topo.device} (torch "
              f"{torch.__version__}, {spec.get('template') or 'task'}) in {Path.cwd()}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if topo.device.type == "cuda":
        torch.cuda.set_device(topo.device)
    # Survivors of a dead peer fail after this instead of gloo's default 30 minutes.
    pg_timeout = spec.get("pg_timeout_s", 60)
    init_process_group(topo.backend, timeout=timedelta(seconds=max(pg_timeout, OUTER_WAIT_S)
                                                       if topo.hierarchical else pg_timeout),
                       secret=job_secret(spec))
    code = Trainer(spec, topo).run()
    _emit_log(f"runtime: rank {topo.rank} finished (exit code {code})")
    return code


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
