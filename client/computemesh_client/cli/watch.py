"""Following a job live: a progress bar on a terminal, a line per status and tenth of the way
in a pipe, NDJSON with --json; exit 1 (JobFailed) unless it completed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from ..client import TERMINAL, Client, job_succeeded
from ..errors import JobFailed
from ..types import Job
from .common import State, eta, money, out


def _line(job_id: int, snapshot: Mapping[str, Any]) -> str:
    progress = snapshot.get("progress") or {}
    parts = [f"job {job_id}", snapshot.get("status", "?")]
    if progress:
        parts += [f"{progress.get('percent', 0):.0f}%",
                  f"step {progress.get('step')}/{progress.get('total_steps')}"]
        if progress.get("loss") is not None:
            parts.append(f"loss {progress['loss']:.4f}")
        parts.append(f"ETA {eta(progress.get('eta_seconds'))}")
    if snapshot.get("cost_so_far") is not None:
        parts.append(f"cost {money(snapshot['cost_so_far'])} tUSD")
    return "  ".join(parts)


def watch_job(state: State, client: Client, job_id: int, *, logs: bool = False) -> Job:
    """Follow a job live until it ends; raise JobFailed unless it completed."""
    events = client.watch(job_id, until=TERMINAL)
    if state.json:
        for event in events:
            if event.type != "log" or logs:
                click.echo(json.dumps({"type": event.type, **event.data}, default=str))
    elif out.is_terminal:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[steps]}"),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("ETA {task.fields[eta]}"),
                   TextColumn("{task.fields[cost]} tUSD")]
        with Progress(*columns, console=out, transient=False) as bar:
            task = bar.add_task(f"job {job_id}", total=None, steps="", loss="-", eta="-", cost="-")
            last_entry = None
            for event in events:
                if event.type == "log" and logs:
                    bar.console.print(event.data.get("line", ""), markup=False)
                elif event.type == "metric":
                    loss, step, total = (event.data.get(k) for k in ("loss", "step", "total_steps"))
                    bar.update(task, completed=step or 0, total=total or None,
                               steps=f"step {step}/{total}" if total else "",
                               loss=f"{loss:.4f}" if loss is not None else "-")
                elif event.type == "job":
                    p = event.data.get("progress") or {}
                    total = p.get("total_steps")
                    steps = {"completed": p["step"], "total": total,
                             "steps": f"step {p['step']}/{total}"} if total else {}
                    bar.update(task, description=f"job {job_id} {event.data.get('status')}",
                               eta=eta(p.get("eta_seconds")), cost=money(event.data.get("cost_so_far")),
                               **steps)
                    if p.get("loss") is not None:
                        bar.update(task, loss=f"{p['loss']:.4f}")
                    # Every snapshot carries the newest timeline entry: print each one once.
                    entry = event.data.get("event")
                    if entry and entry != last_entry:
                        last_entry = entry
                        bar.console.print(f"  {entry.get('to_status') or 'note'}: {entry.get('message')}",
                                          markup=False)
    else:  # a pipe or a log file: a line per change of status and every tenth of the way
        last_status, last_tenth = None, -1
        for event in events:
            if event.type == "log" and logs:
                click.echo(event.data.get("line", ""))
            elif event.type == "job":
                tenth = int((event.data.get("progress") or {}).get("percent") or 0) // 10
                if event.data.get("status") != last_status or tenth != last_tenth:
                    click.echo(_line(job_id, event.data))
                    last_status, last_tenth = event.data.get("status"), tenth
    job = client.job(job_id)
    ok = job_succeeded(job)
    if ok is False:
        last = (job.get("timeline") or [{}])[-1]
        why = last.get("message") or last.get("reason") or ""
        raise JobFailed(f"job {job_id} ended {job['status']}: {why}".rstrip(": "), job)
    if not state.json:
        progress = job.get("progress") or {}
        metric = progress.get("metric") or {}
        summary = f"Job {job_id} {job['status']}"
        if metric:
            summary += f": {metric.get('name')} {metric.get('value'):.4f}"
        spend = job.get("spend") or {}
        if spend.get("spent") is not None:
            summary += f"; cost {money(spend['spent'])} tUSD"
        out.print(summary)
    return job
