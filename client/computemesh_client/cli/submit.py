"""Jobs from a job file and options: quote, submit and run (upload the data or code it
names, submit, fund, watch, download)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import yaml

from .. import jobfile
from ..client import Client
from ..types import Job
from .common import State, cli, emit, json_option, money, out, pass_state, table, upload_progress
from .watch import watch_job

# --- job specs: a job file and options ---------------------------------------------------

def spec_options(f: Callable) -> Callable:
    options = [
        click.argument("job_file", required=False, type=click.Path(dir_okay=False)),
        click.option("--name"), click.option("--template", help="See `computemesh templates`."),
        click.option("--bundle", help="Your code in place of a template: a bundle's id, or a "
                                      "local .py/.zip/.tar.gz to upload."),
        click.option("--weights", help="Fine-tune from your weights: a weights file's id, or a "
                                       "local .pt state_dict to upload."),
        click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
                     help="A hyper-parameter (repeat)."),
        click.option("--dataset", help="sample:<name> or an uploaded dataset's id."),
        click.option("--data", type=click.Path(dir_okay=False),
                     help="A local CSV to upload and train on."),
        click.option("--label-column", help="The uploaded CSV's label column."),
        click.option("--nodes", type=int), click.option("--gpus-per-node", type=int),
        click.option("--gpu-model", "gpu_models", multiple=True),
        click.option("--region", "regions", multiple=True),
        click.option("--compliance", multiple=True),
        click.option("--min-gpu-memory", "min_gpu_memory_gb", type=int),
        click.option("--min-reliability"),
        click.option("--max-price", "max_price_per_gpu_hour", help="Price ceiling, tUSD per GPU-hour."),
        click.option("--budget", help="tUSD."),
        click.option("--deadline", help="ISO 8601, or from now: 30m, 12h, 3d (default 1d)."),
        click.option("--duration-hours"),
        click.option("--sync", type=click.Choice(["ddp", "diloco"]), help="How the nodes synchronise."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.UsageError(f"--param takes KEY=VALUE, not '{text}'")
    return key, yaml.safe_load(value) if value else ""


def build_spec(job_file: str | None, options: dict[str, Any]) -> dict[str, Any]:
    fields = jobfile.read(job_file) if job_file else {}
    given = {k: v for k, v in options.items() if v not in (None, (), [])}
    params = dict(_param(p) for p in given.pop("params", ()))
    if params:
        fields["params"] = {**(fields.get("params") or {}), **params}
    if "sync" in given:
        fields["sync"] = {**(fields.get("sync") or {}), "mode": given.pop("sync")}
    for key in ("gpu_models", "regions", "compliance"):
        if key in given:
            given[key] = list(given[key])
    fields.update(jobfile.normalize(given))
    if "data" in fields and "dataset" in options and options["dataset"]:
        raise click.UsageError("give --data (a local file to upload) or --dataset, not both")
    for key in ("bundle", "weights"):
        if key in given:
            fields[key] = jobfile.bundle_ref(given[key], Path.cwd())
    if "template" not in fields and "bundle" not in fields:
        raise click.UsageError("missing template: give a job file, --template or --bundle")
    if "template" in fields and "bundle" in fields:
        raise click.UsageError("give a template or a bundle, not both")
    fields.setdefault("name", Path(job_file).stem if job_file else
                      fields.get("template") or f"bundle {Path(str(fields['bundle'])).stem}")
    return fields


def _upload_bundle(state: State, client: Client, fields: dict[str, Any], *,
                   stream: bool = False) -> None:
    """A local `bundle` file is uploaded (resumably) and replaced by its id."""
    ref = fields.get("bundle")
    if not isinstance(ref, str):
        return
    bar, progress = upload_progress(state, f"Uploading {Path(ref).name}")
    if bar is not None:
        with bar:
            bundle = client.upload_bundle(ref, progress=progress)
    else:
        bundle = client.upload_bundle(ref)
    fields["bundle"] = bundle["id"]
    if state.json and stream:
        click.echo(json.dumps({"type": "bundle", **bundle}))
    elif not state.json:
        out.print(f"Code bundle {bundle['id']} ({bundle['name']}, {bundle['sha256'][:12]}…, "
                  f"runtime {bundle['runtime']})")


def _upload_weights(state: State, client: Client, fields: dict[str, Any], *,
                    stream: bool = False) -> None:
    """A local `weights` file (a state_dict) is uploaded (resumably) and replaced by its id."""
    ref = fields.get("weights")
    if not isinstance(ref, str):
        return
    bar, progress = upload_progress(state, f"Uploading {Path(ref).name}")
    if bar is not None:
        with bar:
            weights = client.upload_weights(ref, progress=progress)
    else:
        weights = client.upload_weights(ref)
    fields["weights"] = weights["id"]
    if state.json and stream:
        click.echo(json.dumps({"type": "weights", **weights}))
    elif not state.json:
        out.print(f"Weights {weights['id']} ({weights['name']}, {weights.get('entries')} tensors, "
                  f"{weights['sha256'][:12]}…)")


def _upload_data(state: State, client: Client, fields: dict[str, Any], *, stream: bool = False) -> None:
    """A local `data` file becomes an uploaded dataset, used as the job's dataset; its
    `label_column` is checked at the upload and handed to the template's parameters."""
    label = fields.pop("label_column", "")
    if label:
        fields["params"] = {"label_column": label, **(fields.get("params") or {})}
    if "data" not in fields:
        return
    path = fields.pop("data")
    dataset = client.upload_dataset(path, label_column=label)
    fields["dataset"] = str(dataset["id"])
    if state.json and stream:
        click.echo(json.dumps({"type": "uploaded", **dataset}))
    elif not state.json:
        out.print(f"Uploaded {Path(path).name}: dataset {dataset['id']}, {dataset.get('rows')} rows, "
                  f"columns {', '.join(dataset.get('columns') or [])}")


def _render_quote(q: Mapping[str, Any]) -> None:
    if q.get("feasible"):
        out.print(f"[green]Feasible[/]: estimated cost {money(q.get('estimated_cost'))} tUSD, "
                  f"start {q.get('estimated_start') or 'now'}")
    else:
        out.print("[red]No offer takes this job now.[/]")
    if q.get("candidates"):
        out.print(table(["OFFER", "NODE", "PROVIDER", "GPU", "GPUS", "REGION", "tUSD/GPU-h",
                          "RELIABILITY", "EST. COST"],
                         [(c.get("offer_id"), c.get("node_name"), c.get("provider"), c.get("gpu_model"),
                           c.get("gpus"), c.get("region"), c.get("price_per_gpu_hour"),
                           c.get("reliability") or "new", c.get("estimated_cost"))
                          for c in q["candidates"]]))
    for reason in q.get("reasons") or []:
        constraint = f"{reason.get('constraint')}: " if reason.get("constraint") else ""
        out.print(f"  - {constraint}{reason.get('message')}")


@cli.command()
@spec_options
@json_option
@pass_state
def quote(state: State, job_file: str | None, **options: Any) -> None:
    """Which offers would take a job now, at what cost, and why not when none would."""
    fields = build_spec(job_file, options)
    if "data" in fields and "dataset" not in fields:
        fields.pop("data")
        fields["dataset"] = "sample:quote"  # the data's contents do not change the quote
    if isinstance(fields.get("weights"), str):
        fields.pop("weights")  # nor do a fine-tune's weights, which `submit` uploads
    if isinstance(fields.get("bundle"), str):  # a local file: the quote needs it uploaded
        from ..uploads import file_sha256

        sha = file_sha256(Path(fields["bundle"]))
        known = next((b for b in state.client().bundles() if b["sha256"] == sha), None)
        if known is None:
            raise click.UsageError(f"{fields['bundle']} is not uploaded yet: run `computemesh "
                                   "bundles upload` (or `submit`, which uploads it) first")
        fields["bundle"] = known["id"]
    q = state.client(auth=bool(state.settings.token)).quote(jobfile.spec_of(fields))
    emit(state, q, lambda: _render_quote(q))


def _submit(state: State, client: Client, fields: dict[str, Any], *, fund: bool | None,
            stream: bool = False) -> Job:
    _upload_data(state, client, fields, stream=stream)
    _upload_bundle(state, client, fields, stream=stream)
    _upload_weights(state, client, fields, stream=stream)
    job = client.submit(jobfile.spec_of(fields))
    if state.json and stream:
        click.echo(json.dumps({"type": "submitted", "id": job["id"], "status": job["status"]}))
    elif not state.json:
        out.print(f"Submitted job {job['id']} ({job['name']}): {job['status']}")
    if job["status"] == "submitted" and job.get("escrow") is not None and fund is not False:
        job = client.fund(job["id"])
        if not state.json:
            escrow = job.get("escrow") or {}
            out.print(f"Funding the escrow with {money(escrow.get('budget'))} tUSD "
                      f"from the development wallet: {escrow.get('status_display', '')}")
    return job


@cli.command()
@spec_options
@click.option("--fund/--no-fund", default=None,
              help="Fund the escrow from the development wallet (default: when it needs it).")
@json_option
@pass_state
def submit(state: State, job_file: str | None, fund: bool | None, **options: Any) -> None:
    """Submit a job from a job file (YAML or TOML) and/or options."""
    client = state.client()
    job = _submit(state, client, build_spec(job_file, options), fund=fund)
    emit(state, job, lambda: None)


@cli.command()
@spec_options
@click.option("-o", "--output", type=click.Path(), default=".", show_default=True,
              help="Where the trained model goes (a folder or a file).")
@click.option("--download/--no-download", default=True, help="Download the model when done.")
@click.option("--logs/--no-logs", default=False, help="Show the training log lines.")
@json_option
@pass_state
def run(state: State, job_file: str | None, output: str, download: bool, logs: bool,
        **options: Any) -> None:
    """Upload the data, submit, fund, watch to the end and download the model."""
    client = state.client()
    job = _submit(state, client, build_spec(job_file, options), fund=None, stream=True)
    final = watch_job(state, client, job["id"], logs=logs)
    if download and final.get("artifact_url"):
        path = client.download_model(final["id"], output)
        if state.json:
            click.echo(json.dumps({"type": "downloaded", "path": str(path)}))
        else:
            out.print(f"Model saved to {path}")
