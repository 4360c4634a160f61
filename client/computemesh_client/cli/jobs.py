"""`computemesh jobs`: list, show, watch, logs, metrics, and a job's money, disputes,
verification report and model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from ..client import TERMINAL
from ..types import Job
from .common import State, cli, emit, eta, json_option, money, out, pass_state, table
from .watch import watch_job


@cli.group()
def jobs() -> None:
    """Your organization's jobs."""


@jobs.command("list")
@click.option("--status", multiple=True, help="Only these statuses (repeat).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
@pass_state
def jobs_list(state: State, status: tuple[str, ...], limit: int) -> None:
    """List jobs, newest first."""
    client = state.client()
    items: list[Job] = []
    for job in client.iter_jobs(status=list(status) or None):
        items.append(job)
        if len(items) >= limit:
            break
    emit(state, items, lambda: out.print(table(
        ["ID", "NAME", "STATUS", "TEMPLATE", "NODES×GPUS", "BUDGET tUSD", "CREATED"],
        [(j["id"], j["name"], j["status"], j.get("template"), f"{j.get('nodes')}×{j.get('gpus_per_node')}",
          money(j.get("budget")), (j.get("created_at") or "")[:19]) for j in items])))


def _render_job(job: Mapping[str, Any]) -> None:
    out.print(f"[bold]Job {job['id']}[/] {job['name']}: {job['status_display']}")
    out.print(f"  {job.get('template')} on {job.get('dataset')}, {job.get('nodes')} node(s) × "
              f"{job.get('gpus_per_node')}, budget {money(job.get('budget'))} tUSD, "
              f"deadline {job.get('deadline')}")
    p = job.get("progress")
    if p:
        loss = f", loss {p['loss']:.4f}" if p.get("loss") is not None else ""
        out.print(f"  progress {p.get('percent')}% (step {p.get('step')}/{p.get('total_steps')}{loss}), "
                  f"ETA {eta(p.get('eta_seconds'))}")
        if p.get("metric"):
            out.print(f"  {p['metric'].get('name')}: {p['metric'].get('value')}")
    spend = job.get("spend") or {}
    if spend:
        out.print(f"  spent {money(spend.get('spent'))} of {money(spend.get('limit'))} tUSD")
    escrow = job.get("escrow")
    if escrow:
        out.print(f"  escrow {escrow.get('status_display')}: {money(escrow.get('amount'))} tUSD")
    verification = job.get("verification") or {}
    out.print(f"  verification {verification.get('status', '-')}; model "
              f"{'ready to download' if job.get('artifact_url') else 'not available'}")
    partial = job.get("partial_result")
    if partial and not job.get("artifact_url"):
        out.print(f"  partial result: the checkpoint at step {partial['step']} "
                  f"({partial['size_bytes']:,} bytes): computemesh jobs download {job.get('id')} --partial")
    if job.get("assignments"):
        out.print(table(["NODE", "RANK", "PROVIDER", "REGION", "GPU", "GPUS", "STATUS"],
                         [(a.get("node_name"), a.get("node_rank"), a.get("provider"), a.get("region"),
                           a.get("gpu_model"), a.get("gpus"), a.get("status")) for a in job["assignments"]]))
    out.print(table(["AT", "FROM", "TO", "WHY"],
                     [((e.get("at") or "")[:19], e.get("from_status"), e.get("to_status"), e.get("message"))
                      for e in job.get("timeline") or []], title="Timeline"))


@jobs.command("show")
@click.argument("job_id", type=int)
@json_option
@pass_state
def jobs_show(state: State, job_id: int) -> None:
    """A job with its progress, placement, spend and timeline."""
    job = state.client().job(job_id)
    emit(state, job, lambda: _render_job(job))


@jobs.command("watch")
@click.argument("job_id", type=int)
@click.option("--logs/--no-logs", default=False, help="Show the training log lines.")
@json_option
@pass_state
def jobs_watch(state: State, job_id: int, logs: bool) -> None:
    """Follow a job live (progress bar, loss, ETA) until it ends; exit 1 unless it completed."""
    watch_job(state, state.client(), job_id, logs=logs)


@jobs.command("logs")
@click.argument("job_id", type=int)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("--rank", type=click.IntRange(0), help="Only this global rank's lines.")
@click.option("--grep", "text", metavar="TEXT", help="Only lines containing TEXT.")
@json_option
@pass_state
def jobs_logs(state: State, job_id: int, follow: bool, rank: int | None, text: str | None) -> None:
    """The job's output lines per rank (the provider's paths redacted), and with --follow the
    ones to come."""
    client = state.client()
    from ..live import watch_job_blocking

    def show(line: dict) -> None:
        if (rank is not None and line.get("rank") != rank) or (text and text not in line.get("line", "")):
            return
        who = "launcher" if line.get("rank") is None else f"rank {line['rank']}"
        click.echo(json.dumps(line) if state.json else f"[{who}] {line.get('line', '')}")

    last = 0
    for line in client.logs(job_id, rank=rank, q=text or ""):
        show(line)
        last = max(last, int(line.get("seq") or 0))
    if not follow:
        return
    for event in watch_job_blocking(client.url, client.token, job_id, until=TERMINAL):
        if event.type == "log" and int(event.data.get("seq") or 0) > last:
            show(event.data)


@jobs.command("metrics")
@click.argument("job_id", type=int)
@click.option("--after-seq", type=click.IntRange(0), default=0, help="Only points after this one.")
@json_option
@pass_state
def jobs_metrics(state: State, job_id: int, after_seq: int) -> None:
    """The job's stored progress points (step, loss, throughput)."""
    points = state.client().metrics(job_id, after_seq=after_seq)
    emit(state, points, lambda: out.print(table(
        ["SEQ", "STEP", "OF", "EPOCH", "LOSS", "SAMPLES/S", "AT"],
        [(p.get("seq"), p.get("step"), p.get("total_steps"), p.get("epoch"),
          f"{p['loss']:.4f}" if p.get("loss") is not None else None,
          f"{p['samples_per_sec']:.0f}" if p.get("samples_per_sec") is not None else None,
          (p.get("at") or "")[:19]) for p in points])))


@jobs.command("cancel")
@click.argument("job_id", type=int)
@json_option
@pass_state
def jobs_cancel(state: State, job_id: int) -> None:
    """Cancel a job that has not finished (pay only for work done)."""
    job = state.client().cancel(job_id)
    emit(state, job, lambda: out.print(f"Job {job_id}: {job['status_display']}"))


@jobs.command("budget")
@click.argument("job_id", type=int)
@click.argument("amount")
@click.option("--fund/--no-fund", default=True, help="Top the escrow up from the development wallet.")
@json_option
@pass_state
def jobs_budget(state: State, job_id: int, amount: str, fund: bool) -> None:
    """Raise a job's total budget to AMOUNT tUSD (a job paused at its budget resumes)."""
    client = state.client()
    job = client.raise_budget(job_id, amount)
    if fund and (job.get("escrow") or {}).get("status") == "funded":
        job = client.fund(job_id)
    emit(state, job, lambda: out.print(f"Job {job_id}: budget {money(job['budget'])} tUSD, "
                                       f"{job['status_display']}"))


@jobs.command("fund")
@click.argument("job_id", type=int)
@json_option
@pass_state
def jobs_fund(state: State, job_id: int) -> None:
    """Fund a submitted job's escrow from the organization's development wallet."""
    job = state.client().fund(job_id)
    emit(state, job, lambda: out.print(
        f"Job {job_id}: escrow {(job.get('escrow') or {}).get('status_display', '-')}, "
        f"{job['status_display']}"))


@jobs.command("statement")
@click.argument("job_id", type=int)
@click.option("--csv", "fmt", flag_value="csv", help="Save the statement as a CSV file instead.")
@click.option("--pdf", "fmt", flag_value="pdf", help="Save the statement as a PDF file instead.")
@click.option("-o", "--output", type=click.Path(), default=".", show_default=True,
              help="With --csv or --pdf: a folder or a file name.")
@json_option
@pass_state
def jobs_statement(state: State, job_id: int, fmt: str | None, output: str) -> None:
    """The settlement: charged, fee, refund, payouts and the transaction (--csv, --pdf: the
    statement as a file, as the job page offers it)."""
    if fmt:
        path = state.client().statement_file(job_id, fmt, output)
        emit(state, {"path": str(path)}, lambda: out.print(f"Statement saved to {path}"))
        return
    statement = state.client().statement(job_id)
    if statement is None:
        emit(state, None, lambda: out.print(f"Job {job_id} has no settlement statement (yet)."))
        return

    def render() -> None:
        out.print(f"charged {money(statement.get('charged'))} tUSD, fee {money(statement.get('fee'))}, "
                  f"refunded {money(statement.get('refunded'))}; transaction {statement.get('transaction')}")
        payouts = statement.get("payouts") or []
        out.print(table(["PROVIDER", "ADDRESS", "tUSD"],
                         [(p.get("provider"), p.get("address"), p.get("amount")) for p in payouts]))
    emit(state, statement, render)


@jobs.command("dispute")
@click.argument("job_id", type=int)
@click.argument("reason", required=False)
@json_option
@pass_state
def jobs_dispute(state: State, job_id: int, reason: str | None) -> None:
    """Dispute a completed job's result with REASON; without it, list the job's disputes."""
    client = state.client()
    if reason is None:
        items = client.disputes(job_id)
        emit(state, items, lambda: out.print(table(
            ["ID", "STATUS", "REASON", "RESOLUTION", "REFUND"],
            [(d["id"], d["status"], d["reason"], d.get("resolution"), money(d.get("refund_amount")))
             for d in items])))
        return
    d = client.open_dispute(job_id, reason)
    emit(state, d, lambda: out.print(f"Dispute {d['id']} on job {job_id} opened; staff review it."))


@jobs.command("verification")
@click.argument("job_id", type=int)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Save the report here.")
@json_option
@pass_state
def jobs_verification(state: State, job_id: int, output: str | None) -> None:
    """The verification report (JSON)."""
    report = state.client().verification_report(job_id)
    if output:
        Path(output).write_text(json.dumps(report, indent=2))
        emit(state, {"path": output}, lambda: out.print(f"Report saved to {output}"))
    else:
        click.echo(json.dumps(report, indent=2))


@jobs.command("download")
@click.argument("job_id", type=int)
@click.option("-o", "--output", type=click.Path(), default=".", show_default=True,
              help="A folder or a file name.")
@click.option("--partial", is_flag=True,
              help="The partial result instead: the newest checkpoint whose work was checked and "
                   "paid for (a cancelled, failed, paused or interrupted job).")
@json_option
@pass_state
def jobs_download(state: State, job_id: int, output: str, partial: bool) -> None:
    """Download the trained model (once its verification has passed), or with --partial the
    last trusted checkpoint."""
    client = state.client()
    path = client.download_checkpoint(job_id, output) if partial else client.download_model(job_id, output)
    what = "Checkpoint" if partial else "Model"
    emit(state, {"path": str(path), "bytes": path.stat().st_size if path else None},
         lambda: out.print(f"{what} saved to {path}"))
