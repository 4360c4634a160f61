"""One assignment on this node: fetch its inputs, run its ranks, report what happens.

A little over 400 lines: one assignment's life (inputs, launch, watch, uploads, the end)
reads as one story; the sandbox, the logs, the launcher and transfers have their modules."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import bundle_fetch, collective_iface, launcher, peer_firewall, rank_logs, transfer
from . import sandbox as sandboxing
from .events_tail import EventTail

if TYPE_CHECKING:
    from .agent import Agent

PROGRESS_FLUSH_S = 1.0  # progress points are batched into one message a second
POLL_S = 0.25
STALL_TIMEOUT_S = 180.0  # default: no event and no output for this long, the group is hung
# Before the ranks' first event the limit is at least this (the default of the agent's
# --startup-grace): importing torch and forming the process group (which gives up by itself
# after pg_timeout_s, 60 s) show nothing.
STARTUP_GRACE_S = 90.0
SHUTDOWN_GRACE_S = 30  # after the result, ranks that do not exit are killed
LOG_BATCH = 50
LOG_FLUSH_S = 1.0
# Checkpoints kept on this node per assignment unless the start message says otherwise: the
# newest few (each is uploaded as it appears), so that a long job cannot fill the disk.
KEEP_CHECKPOINTS = 3


_CHECKPOINT_NAME = re.compile(r"^step-(\d{7,})\.pt$")  # workers/training/checkpoint.save


def prune_checkpoints(directory: Path, *, up_to_step: int, keep: int) -> list[Path]:
    """Delete all but the newest `keep` of the checkpoints up to `up_to_step`; newer ones
    (not uploaded yet) stay."""
    if not directory.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in directory.iterdir()
                   if (m := _CHECKPOINT_NAME.match(p.name)) and int(m.group(1)) <= up_to_step)
    gone = [p for _, p in found[:-keep]] if keep > 0 else []
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


class AssignmentRun:
    def __init__(self, agent: Agent, start: dict):
        self.agent = agent
        self.start_msg = start
        self.id = int(start["assignment"])
        self.job = start.get("job")
        self.dir = agent.workdir / "assignments" / str(self.id)
        self.process: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task | None = None
        self.cancelled_reason: str | None = None
        self.last_lines: deque[str] = deque(maxlen=20)
        self.result: dict | None = None
        self.error: dict | None = None
        self.last_activity = time.monotonic()
        self.launched_at: float | None = None  # when the ranks were started
        self.reported = False  # the ranks wrote an event: the startup grace is over
        # This node's own last training step: every node's leader writes it (`alive`, at
        # least every few seconds), not only global rank 0; heartbeats carry it.
        self.step: int | None = None
        # This node's ranks trained every step (its leader's node_finished): what is left is rank
        # 0's evaluation and torchrun's exit barrier, quiet on this node however long they take.
        self.node_done = False
        self.progress_buffer: list[dict] = []
        self.last_flush = 0.0
        self.log_batch: list[dict] = []
        self.rank_logs = rank_logs.RankLogs(rank_logs.Redactor(job_dir=self.dir))
        self.last_log_flush = 0.0
        self.total_steps = 0
        self.comm: dict = {}  # the bytes this node sent to the others, and DDP's for the same steps
        self.sandbox: sandboxing.Sandbox | None = None  # when its ranks run inside one
        self.disk_watch: sandboxing.DiskWatch | None = None

    @property
    def label(self) -> str:
        s = self.start_msg
        return (f"job {self.job} · assignment {self.id} · node {s['node_rank'] + 1}/{s['nnodes']}"
                f" · {s['nproc_per_node']} proc")

    # --- lifecycle ----------------------------------------------------------------
    def launch(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"assignment-{self.id}")

    def pause(self) -> None:
        """The platform says the job's budget is spent: the ranks checkpoint at their next
        step boundary and exit (they watch this file); `_watch` then reports the pause.
        Idempotent: the platform repeats it with heartbeats until the assignment ends."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # Never through a link the job may have put there (the agent's rights, not the job's).
        try:
            os.close(os.open(self.dir / "pause", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644))
        except OSError as exc:
            self.agent.display.log(f"assignment {self.id}: cannot ask it to pause: {exc}")

    async def cancel(self, reason: str) -> None:
        self.cancelled_reason = reason
        if self.process is not None:
            await launcher.stop(self.process)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _run(self) -> None:
        s = self.start_msg
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            settings = getattr(self.agent, "sandbox", None) or sandboxing.Settings(available=False)
            sandboxed = settings.applies({"bundle": s.get("bundle")})
            if sandboxed and not settings.available:  # before a byte of the job is fetched
                raise transfer.TransferError(
                    "this node cannot run consumers' code: bubblewrap is missing or cannot build its "
                    "sandbox here (apt-get install bubblewrap)")
            # Across nodes, consumers' code only ever runs confined to its peers (templates too
            # where this machine can).
            confine_to_peers = (sandboxed and s["nnodes"] > 1
                                and (bool(s.get("bundle")) or settings.peer_firewall))
            if confine_to_peers and not settings.peer_firewall:  # consumers' code, across nodes
                raise transfer.TransferError(
                    "this node cannot confine a multi-node job's code to its peers (the sandbox's "
                    "peers firewall needs root, nftables and cgroup v2)")
            dataset = await asyncio.to_thread(self._fetch_inputs)
            weights = await asyncio.to_thread(self._fetch_weights) if s.get("weights") else None
            bundle = None
            if s.get("bundle"):  # the consumer's own task: its code into the job's folder
                bundle = await asyncio.to_thread(bundle_fetch.fetch, s["bundle"], job_dir=self.dir,
                                                 url=self.agent.url, token=s["token"])
            rdzv: dict[str, Any]
            if s["node_rank"] == 0 and not s.get("rdzv"):
                rdzv = {"host": self.agent.advertise_addr, "port": launcher.free_port()}
            else:
                rdzv = s["rdzv"]
            sync = s.get("sync") or {"mode": "ddp"}
            # DiLoCo: rank 0's advertised address is where its leader coordinates the outer
            # synchronisation; each node trains in a process group of its own.
            diloco = sync.get("mode") == "diloco" and s["nnodes"] > 1
            spec = self._spec(dataset=dataset, bundle=bundle, rdzv=rdzv, sync=sync, diloco=diloco)
            spec["weights"] = weights  # a fine-tune's start: every rank loads it before step 0
            spec_path = self.dir / "spec.json"
            spec_path.write_text(json.dumps(spec))
            await self.agent.send_data(self.id, "assignment.accepted", rdzv=rdzv)
            # A single-node sandbox has loopback only: its ranks meet there.
            master = "127.0.0.1" if sandboxed and s["nnodes"] == 1 else str(rdzv["host"])
            cmd = launcher.command(spec_path=spec_path, nnodes=s["nnodes"], node_rank=s["node_rank"],
                                   nproc_per_node=s["nproc_per_node"], master_addr=master,
                                   master_port=int(rdzv["port"]), standalone=diloco)
            threads = max(1, self.agent.cpu_threads // max(1, s["nproc_per_node"]))
            env = launcher.environment(threads=threads)
            if s["nnodes"] > 1 and not diloco:  # the nodes' ranks meet in one gloo/NCCL group
                env.update(await self._collective_env(env))
            if sandboxed:
                firewall = peer_firewall.for_assignment(s, rdzv) if confine_to_peers else None
                cmd, env, self.sandbox = launcher.sandboxed(cmd, env, job_dir=self.dir, nnodes=s["nnodes"],
                                                            limits=settings.limits, firewall=firewall)
                self.agent.display.log(f"assignment {self.id}: sandboxed; "
                                       f"{self.sandbox.enforcement.describe()}")
            self.process = process = await launcher.start(cmd, env, self.dir, split_streams=True)
            self.launched_at = self.last_activity = time.monotonic()
            watch = None
            if self.sandbox is not None and self.sandbox.limits.disk_bytes:
                self.disk_watch = sandboxing.DiskWatch(self.dir, self.sandbox.limits.disk_bytes)
                watch = asyncio.create_task(self.disk_watch.run(process))
            try:
                await self._watch(process)
            finally:
                if watch is not None:
                    watch.cancel()
        except transfer.TransferError as exc:
            await self._finish("failed", error=str(exc))
        except peer_firewall.FirewallError as exc:
            await self._finish("failed", error=f"the sandbox's peers firewall: {exc}")
        except asyncio.CancelledError:
            if self.process is not None:
                await launcher.stop(self.process)
            shutil.rmtree(self.dir, ignore_errors=True)  # cancelled: the job's files go too
            self.agent.display.assignment_done(
                self.id, f"■ assignment {self.id} stopped: {self.cancelled_reason or 'cancelled'}")
        except Exception as exc:  # report, never take the agent down with one job
            await self._finish("failed", error=f"agent error: {exc!r}")
        finally:
            if self.sandbox is not None:
                await asyncio.to_thread(self.sandbox.close)  # kills what is left, removes its cgroups
            self.agent.forget(self.id)

    async def _collective_env(self, env: dict[str, str]) -> dict[str, str]:
        """The interface the ranks' collectives use: the one holding the address the peers
        reach this node at (collective_iface.py). What the provider set itself is kept."""
        addr = self.agent.advertise_addr
        interface = await asyncio.to_thread(collective_iface.interface_for, addr)
        if interface is None:
            self.agent.display.log(f"assignment {self.id}: no interface here holds the advertised "
                                   f"address {addr}; the ranks pick theirs from the host name")
            return {}
        ours = collective_iface.environment(interface)
        kept = sorted(k for k in ours if env.get(k))
        self.agent.display.log(f"assignment {self.id}: collectives on {interface} ({addr})"
                               + (f"; the provider's own {', '.join(kept)} kept" if kept else ""))
        return {k: v for k, v in ours.items() if k not in kept}

    def _spec(self, *, dataset: dict, bundle: dict | None, rdzv: dict[str, Any], sync: dict,
              diloco: bool) -> dict:
        """spec.json: what every rank of this node's group reads (workers/training/run.py)."""
        s = self.start_msg
        spec = {
            "template": s.get("template"), "bundle": bundle, "params": s["params"], "dataset": dataset,
            "data_dir": dataset.get("data_dir"),
            "workdir": str(self.dir), "backend": s.get("backend", "gloo"),
            "resume_from": str(self.dir / "resume.pt") if s.get("resume_checkpoint_url") else None,
            "pg_timeout_s": s.get("pg_timeout_s", 60),
            "sync": sync, "nnodes": s["nnodes"], "node_rank": s["node_rank"],
            "verify": s.get("verify"),  # checkpoint cadence for the platform's spot checks
            "pause_file": str(self.dir / "pause"),
            # The platform's per-job secret: this job's nodes authenticate each other with it.
            "job_secret": s.get("job_secret"),
        }
        if diloco:
            self.rank_logs.rank_offset = s["node_rank"] * s["nproc_per_node"]
            # advertise_host: where the other leaders reach this one's chunk inbox.
            spec.update(outer=rdzv, member=str(self.id), peer_timeout_s=s.get("peer_timeout_s", 15),
                        advertise_host=self.agent.advertise_addr)
        return spec

    def _fetch_inputs(self) -> dict:
        s, token = self.start_msg, self.start_msg["token"]
        if s.get("resume_checkpoint_url"):
            sha = transfer.download(self.agent.url(s["resume_checkpoint_url"]), token,
                                    self.dir / "resume.pt")
            if s.get("resume_checkpoint_sha256") and sha != s["resume_checkpoint_sha256"]:
                raise transfer.TransferError("the resume checkpoint does not match its SHA-256")
        dataset = s["dataset"]
        if dataset.get("kind") == "csv":
            path = self.dir / "dataset.csv"
            sha = transfer.download(self.agent.url(s["dataset_url"]), token, path)
            if s.get("dataset_sha256") and sha != s["dataset_sha256"]:
                raise transfer.TransferError("the dataset does not match its SHA-256")
            return {"kind": "csv", "path": str(path)}
        if dataset.get("kind") == "zip":  # files of any layout, for a bundle's task to read
            folder = bundle_fetch.fetch_data_zip(self.agent.url(s["dataset_url"]),
                                                 sha256=s.get("dataset_sha256"), job_dir=self.dir,
                                                 token=token)
            return {"kind": "zip", "data_dir": str(folder)}
        return dataset

    def _fetch_weights(self) -> dict:
        """A fine-tune's input weights into the job's folder (the sandbox's ranks read them
        there), checked against the SHA-256 the platform committed to."""
        s = self.start_msg
        path = self.dir / "weights.pt"
        sha = transfer.download(self.agent.url(s["weights"]["url"]), s["token"], path)
        if sha != s["weights"].get("sha256"):
            raise transfer.TransferError("the weights file does not match its SHA-256")
        return {"path": str(path), "sha256": sha}

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        tail = EventTail(self.dir / "events.jsonl")
        assert process.stdout is not None and process.stderr is not None  # split_streams
        reader = asyncio.gather(self._read_output(process.stdout, "stdout"),
                                self._read_output(process.stderr, "stderr"))
        finished_at = None
        try:
            while True:
                await self._forward(tail.poll())
                await self._flush_logs(older_than_s=LOG_FLUSH_S)
                if process.returncode is not None:
                    break
                now = time.monotonic()
                if self.result is not None or self.node_done:
                    finished_at = finished_at or now
                    if now - finished_at > SHUTDOWN_GRACE_S:
                        self.agent.display.log(f"assignment {self.id}: ranks hung after finishing; "
                                               "stopping them")
                        await launcher.stop(process)
                        break
                elif self.stalled(now):
                    await launcher.stop(process)
                    await self._finish("failed", error=f"no progress for {self.agent.stall_timeout_s:g} s; "
                                                       "stopped")
                    return
                await asyncio.sleep(POLL_S)
            await self._forward(tail.poll())
            await self._flush_progress(force=True)
        finally:
            await reader
        if self.cancelled_reason:
            return
        limit = self._limit_reached()
        if limit and self.result is None:
            self.error = {"error": limit, "error_kind": "limit"}
        paused = self._paused()
        if self.error is None and self.result is None and paused is not None:
            # Checkpointed and stopped on the platform's request; the checkpoint went first.
            await self._finish("paused", **paused)
        elif self.error is not None:
            await self._finish("failed", **self.error)
        elif self.result is not None or (self.start_msg["node_rank"] > 0
                                         and (process.returncode == 0 or self.node_done)):
            await self._finish("succeeded", **(self.result or {}))
        else:
            tail_lines = "\n".join(list(self.last_lines)[-8:])
            await self._finish("failed", error=f"training exited with {process.returncode}:\n"
                                               f"{tail_lines}")

    def _limit_reached(self) -> str | None:
        """Which of the sandbox's limits ended the ranks, if one did."""
        if self.disk_watch is not None and self.disk_watch.reason():
            return self.disk_watch.reason()
        if self.sandbox is not None and self.process is not None \
                and self.process.returncode == sandboxing.WALL_TIME_EXIT:
            return f"the sandbox's wall-time limit ({self.sandbox.limits.wall_s:g} s) was reached; stopped"
        return None

    def _paused(self) -> dict | None:
        """paused.json's step and total, read inside the job's folder only (never a link)."""
        try:
            with sandboxing.open_job_file(self.dir, self.dir / "paused.json") as fh:
                found = json.loads(fh.read(4096))
        except (OSError, ValueError):
            return None
        if not isinstance(found, dict):
            return None
        return {k: found[k] for k in ("step", "total_steps") if isinstance(found.get(k), int)}

    def stalled(self, now: float) -> bool:
        """Hung: nothing from this node's own ranks (no event, no output) for the stall
        timeout. Every node's leader writes an event at least every few seconds while its
        steps complete, and a step completes only when its collectives do, so a node that
        waits on a slow peer still shows life; one stuck in a collective does not."""
        if now - self.last_activity <= self.agent.stall_timeout_s:
            return False
        launched = self.launched_at if self.launched_at is not None else now
        return self.reported or now - launched > self.agent.startup_grace_s

    async def _read_output(self, pipe: asyncio.StreamReader, stream: str) -> None:
        while True:
            try:
                line = await pipe.readline()
            except ValueError:  # a line past the pipe's limit (64 KiB): asyncio dropped it
                line = b"[a line over 64 KiB was dropped]\n"
            if line:
                self.last_activity = time.monotonic()
                for item in self.rank_logs.add(line, stream):
                    rank = "" if item["rank"] is None else f"[rank {item['rank']}] "
                    self.last_lines.append(rank + item["text"])
                    self.log_batch.append(item)
            if self.log_batch and (not line or len(self.log_batch) >= LOG_BATCH):
                await self._flush_logs()
            if not line:
                return

    async def _flush_logs(self, *, older_than_s: float = 0.0) -> None:
        """Send buffered output lines: in batches, and at least every LOG_FLUSH_S, so that a
        quiet run's few lines are not held back until it ends."""
        if self.log_batch and time.monotonic() - self.last_log_flush >= older_than_s:
            lines, self.log_batch = self.log_batch, []
            self.last_log_flush = time.monotonic()
            await self.agent.send_data(self.id, "log", lines=lines)

    async def _flush_progress(self, *, force: bool = False) -> None:
        """Send buffered progress points: at most once a second (each message costs the
        platform a transaction), and always before a checkpoint or the result."""
        now = time.monotonic()
        if self.progress_buffer and (force or now - self.last_flush >= PROGRESS_FLUSH_S):
            items, self.progress_buffer = self.progress_buffer, []
            self.last_flush = now
            await self.agent.send_data(self.id, "progress", items=items)

    async def _forward(self, events: list[dict]) -> None:
        for event in events:
            self.last_activity = time.monotonic()
            self.reported = True
            kind = event.pop("type")
            if isinstance(event.get("step"), int):
                self.step = event["step"]
            if kind == "alive":  # liveness only: its step goes out with heartbeats
                continue
            if kind == "node_finished":
                self.node_done = True
            if "comm_bytes" in event:  # progress, outer rounds, the end: this node's traffic
                self.comm = {k: event[k] for k in ("comm_bytes", "comm_bytes_ddp") if k in event}
            if kind in ("started", "progress", "checkpoint") and self._vanish_due(event):
                self.agent.vanish(int(event["step"]))
            if kind == "started":
                self.agent.display.assignment_started(self.id, self.label, event["total_steps"],
                                                      event["step"])
                self.progress_buffer.append({**event, "phase": "started"})
            elif kind == "progress":
                self.progress_buffer.append(event)
                self.agent.display.assignment_progress(
                    self.id, step=event["step"], total=event["total_steps"], loss=event.get("loss"),
                    rate=event.get("samples_per_sec"))
            elif kind == "checkpoint":
                await self._flush_progress(force=True)
                await self._upload_checkpoint(event)
            elif kind == "commitments":
                await self._upload_commitments(event)
            elif kind == "finished":
                await self._flush_progress(force=True)
                await self._upload_artifact(event)
            elif kind == "failed":
                self.error = {"error": event.get("message", "training failed"),
                              "error_kind": event.get("reason", "")}
        await self._flush_progress()

    def _vanish_due(self, event: dict) -> bool:
        """Fault injection: has training reached the share of its steps where this node
        is to vanish? (`total_steps` comes with the started and progress events.)"""
        share = self.agent.faults.vanish
        self.total_steps = int(event.get("total_steps") or self.total_steps or 0)
        return share > 0 and self.total_steps > 0 and int(event.get("step", -1)) >= share * self.total_steps

    async def _upload_checkpoint(self, event: dict) -> None:
        if self.agent.faults.withhold_checkpoints:  # test-only: work nobody can replay
            return
        s = self.start_msg
        url = self.agent.url(f"{s['upload_url']}checkpoints/{event['step']}/")
        path = Path(event["path"])
        try:
            await asyncio.to_thread(transfer.upload, url, s["token"], path, sha256=event["sha256"],
                                    root=self.dir)
        except transfer.TransferError as exc:
            self.agent.display.log(f"assignment {self.id}: checkpoint {event['step']} not uploaded: {exc}")
            return
        finally:
            # Disk per assignment: the agent prunes, not the ranks, and only what it has dealt
            # with (checkpoints are handled in order). The ranks pruning on their own deleted
            # checkpoints before their upload, which the platform's replay needed.
            prune_checkpoints(self.dir / "checkpoints", up_to_step=int(event["step"]),
                              keep=int(s.get("keep_checkpoints") or KEEP_CHECKPOINTS))
        await self.agent.send_data(self.id, "checkpoint", step=event["step"], sha256=event["sha256"],
                                   bytes=event["bytes"])

    async def _upload_commitments(self, event: dict) -> None:
        """This node's copy of every rank's gradient commitments since the last checkpoint
        (DDP across nodes): each node's agent uploads its own, so that the platform never
        takes one node's word about another's contribution."""
        s = self.start_msg
        url = self.agent.url(f"{s['upload_url']}commitments/{event['step']}/")
        try:
            data = transfer.read_span(Path(event["path"]), int(event["offset"]), int(event["length"]),
                                      root=self.dir)
            await asyncio.to_thread(transfer.upload, url, s["token"], None, data=data,
                                    sha256=hashlib.sha256(data).hexdigest())
        except transfer.TransferError as exc:  # the work goes on; its attribution may not
            self.agent.display.log(f"assignment {self.id}: commitments up to step {event['step']} "
                                   f"not uploaded: {exc}")

    async def _upload_artifact(self, event: dict) -> None:
        s = self.start_msg
        await asyncio.to_thread(transfer.upload, self.agent.url(f"{s['upload_url']}artifact/"), s["token"],
                                Path(event["artifact"]), sha256=event["sha256"], root=self.dir)
        self.result = {"metric": event["metric"], "value": event["value"], "step": event["step"],
                       "artifact_sha256": event["sha256"], "param_digests": event["param_digests"]}

    async def _delete_files(self) -> bool:
        """The job's data, checkpoints, spec and outputs leave this node with the assignment,
        whatever its end (issue 13 item 7): what had to reach the platform was uploaded while
        it ran. True when nothing of it is left."""
        if self.process is not None:
            await launcher.stop(self.process)
        await asyncio.to_thread(shutil.rmtree, self.dir, True)
        return not self.dir.exists()

    async def _finish(self, status: str, **fields) -> None:
        fields = {**self.comm, **fields, "data_deleted": await self._delete_files()}
        await self.agent.send_data(self.id, "assignment.finished", status=status, **fields)
        icon = {"succeeded": "✔", "paused": "⏸"}.get(status, "✖")
        if status == "paused":
            detail = f"at step {fields.get('step')} (budget spent)"
        elif status != "succeeded":
            detail = fields.get("error", "").splitlines()[0]
        else:
            detail = f"{fields.get('metric', '')} {fields.get('value', '')}".strip()
        self.agent.display.assignment_done(self.id, f"{icon} assignment {self.id} {status} {detail}")
