"""`computemesh`: the marketplace from a terminal.

Exit codes: 0 done; 1 a watched job failed (or was cancelled or refunded); 2 usage error
or invalid input (the field is named); 3 not found, not yours, or refused (wrong password,
not allowed, not possible now); 4 the server could not be reached (or failed).
Every command takes --json (machine-readable output on stdout). Errors are one line on
stderr; with --json their API error shape is also printed on stdout.
Shell completion: `eval "$(computemesh completion bash)"` (bash, zsh or fish).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TransferSpeedColumn
from rich.table import Table

from . import __version__, config, jobfile
from .client import TERMINAL, Client, job_succeeded
from .errors import (
    EXIT_NETWORK,
    EXIT_USAGE,
    AuthenticationError,
    ComputeMeshError,
    JobFailed,
)
from .types import Job

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
out = Console(highlight=False, soft_wrap=True)


class State:
    def __init__(self, url: str | None):
        self.url_option = url
        self.json = False
        self._client: Client | None = None

    @property
    def settings(self) -> config.Settings:
        return config.load(self.url_option)

    def client(self, *, auth: bool = True) -> Client:
        if self._client is None:
            s = self.settings
            if auth and not s.token:
                raise AuthenticationError(401, {
                    "detail": f"Not logged in to {s.url}: run `computemesh login` or set "
                              "COMPUTEMESH_TOKEN.", "code": "not_logged_in"})
            retries = os.environ.get("COMPUTEMESH_RETRIES", "")
            self._client = Client(s.url, s.token, retries=int(retries) if retries.isdigit() else 3)
        return self._client


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(State).json = True


def json_option(f: Callable) -> Callable:
    return click.option("--json", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_json, help="Machine-readable JSON on stdout.")(f)


pass_state = click.make_pass_decorator(State, ensure=True)


def emit(state: State, data: Any, render: Callable[[], None]) -> None:
    if state.json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render()


def _money(value: Any) -> str:
    if value in (None, ""):
        return "-"
    try:
        return f"{float(value):.6f}".rstrip("0").rstrip(".") if float(value) else "0"
    except (TypeError, ValueError):
        return str(value)


def _eta(seconds: Any) -> str:
    if seconds is None:
        return "-"
    seconds = int(float(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _table(columns: Iterable[str], rows: Iterable[Iterable[Any]], title: str | None = None) -> Table:
    table = Table(title=title, header_style="bold", title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("-" if v is None else str(v) for v in row))
    return table


# --- the group -----------------------------------------------------------------------

@click.group(context_settings=CONTEXT, help=__doc__)
@click.option("--url", metavar="URL", help="The platform (default: saved login, COMPUTEMESH_URL, "
              f"or {config.DEFAULT_URL}).")
@json_option
@click.version_option(__version__, prog_name="computemesh")
@click.pass_context
def cli(ctx: click.Context, url: str | None) -> None:
    ctx.ensure_object(State).url_option = url


# --- login ---------------------------------------------------------------------------

@cli.command()
@click.option("-u", "--username", prompt=True)
@click.option("-p", "--password", prompt=True, hide_input=True, envvar="COMPUTEMESH_PASSWORD",
              help="Asked for when not given (or COMPUTEMESH_PASSWORD).")
@json_option
@pass_state
def login(state: State, username: str, password: str) -> None:
    """Log in and save the API token (0600) in the user's config folder."""
    url = state.settings.url
    token = state.client(auth=False).login(username, password)
    path = config.save(url=url, token=token, username=username)
    emit(state, {"url": url, "username": username, "config": str(path)},
         lambda: out.print(f"Logged in to {url} as {username}; token saved in {path}"))


@cli.command()
@json_option
@pass_state
def logout(state: State) -> None:
    """Forget the saved token."""
    removed = config.forget()
    emit(state, {"removed": removed}, lambda: out.print("Logged out." if removed else "Not logged in."))


@cli.command()
@json_option
@pass_state
def whoami(state: State) -> None:
    """Who the saved token (or COMPUTEMESH_TOKEN) belongs to, as the server says (GET /me/)."""
    s = state.settings
    client = state.client()
    try:
        me = client.me()
    except AuthenticationError:
        refused = {"detail": f"The server at {s.url} refuses the token from {s.token_from}: log in "
                             "again.", "code": "bad_token"}
        raise AuthenticationError(401, refused) from None
    wallets = client.wallets()
    org = me.get("organization")
    data = {"url": s.url, "username": me["username"], "organization": org, "role": me.get("role"),
            "is_staff": me.get("is_staff", False), "token_from": s.token_from,
            "wallets": [w["address"] for w in wallets]}
    emit(state, data, lambda: out.print(
        f"{me['username']} at {s.url}"
        + (f", {me.get('role')} of {org['name']} ({org['kind']}, #{org['id']})" if org else "")
        + (" (staff)" if me.get("is_staff") else "")
        + (f"; wallet {', '.join(data['wallets'])}" if data["wallets"] else "")))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(computemesh completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "computemesh", "_COMPUTEMESH_COMPLETE").source())


# --- templates -----------------------------------------------------------------------

@cli.command()
@json_option
@pass_state
def templates(state: State) -> None:
    """The training templates, their metric and bundled sample datasets."""
    items = state.client(auth=False).templates()
    emit(state, items, lambda: out.print(_table(
        ["NAME", "TITLE", "SECTOR", "METRIC", "SAMPLES (dataset: sample:<name>)"],
        [(t["name"], t.get("title"), t.get("sector"), t.get("metric"),
          ", ".join(s.get("name", "") for s in t.get("samples") or [])) for t in items])))


# --- offers --------------------------------------------------------------------------

SORTS = {"price": "price_per_gpu_hour", "memory": "gpu_memory_gb", "reliability": "reliability"}


def _offer_rows(items: Sequence[Mapping[str, Any]], *, status: bool = False) -> Table:
    # A provider's own list shows each offer's status (paused ones are listed there only).
    return _table(
        ["ID", *(["STATUS"] if status else []), "GPU", "MEM GB", "FREE/OFFERED", "tUSD/GPU-h",
         "REGION", "COMPLIANCE", "RELIABILITY", "ONLINE", "OWN CODE", "PROVIDER", "NODE"],
        [(o["id"], *([o.get("status")] if status else []), o.get("gpu_model"), o.get("gpu_memory_gb"),
          f"{o.get('gpus_available')}/{o.get('gpus_offered')}", o.get("price_per_gpu_hour"),
          o.get("region"), ",".join(o.get("compliance") or []) or "-",
          "new" if o.get("is_new") else o.get("reliability"), "yes" if o.get("online") else "no",
          "yes" if o.get("accepts_custom_code") else "no",
          o.get("provider"), o.get("node_name")) for o in items])


@cli.group(invoke_without_command=True)
@click.option("--gpu-model", multiple=True, help="GPU model (repeat for any of several; cpu for CPU slots).")
@click.option("--min-gpus", type=int, help="At least this many free GPUs.")
@click.option("--min-gpu-memory", type=int, help="GB per GPU, at least.")
@click.option("--region", multiple=True, help="Region (EU-DE) or bloc (EU); repeat for any of several.")
@click.option("--compliance", multiple=True, help="Verified tag (hipaa, gdpr, …); repeat to require all.")
@click.option("--max-price", help="tUSD per GPU-hour, at most.")
@click.option("--min-reliability", help="0–1; excludes new nodes.")
@click.option("--online/--any-status", default=None, help="Only offers whose agent is connected.")
@click.option("--custom-code/--any-code", default=None,
              help="Only offers that run your own code (code bundles).")
@click.option("--sort", type=click.Choice([*SORTS, *(f"-{k}" for k in SORTS)]),
              help="Sort by price, memory or reliability; prefix - for descending.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--mine", is_flag=True, help="Your organization's offers, paused ones included (providers).")
@json_option
@click.pass_context
def offers(ctx: click.Context, gpu_model, min_gpus, min_gpu_memory, region, compliance, max_price,
           min_reliability, online, custom_code, sort, limit, mine) -> None:
    """Search offers, or list your own with --mine (the subcommands manage a provider's
    own offers)."""
    if ctx.invoked_subcommand is not None:
        return
    state = ctx.ensure_object(State)
    ordering = None
    if sort:
        ordering = ("-" if sort.startswith("-") else "") + SORTS[sort.lstrip("-")]
    filters = {"gpu_model": list(gpu_model), "min_gpus": min_gpus, "min_gpu_memory_gb": min_gpu_memory,
               "region": list(region), "compliance": list(compliance), "max_price": max_price,
               "min_reliability": min_reliability, "online": online,
               "accepts_custom_code": custom_code, "ordering": ordering}
    client = state.client(auth=mine)
    first_page, every = (client.my_offers, client.iter_my_offers) if mine else (
        client.offers, client.iter_offers)
    page = first_page(page_size=min(limit, 100), **filters)
    items: list[Any] = page["results"]
    if limit > 100 and page.get("next"):
        items = []
        for offer in every(**filters):
            items.append(offer)
            if len(items) >= limit:
                break
    items = items[:limit]

    def render() -> None:
        out.print(_offer_rows(items, status=mine))
        out.print(f"{len(items)} of {page['count']} offers")
    emit(state, {"count": page["count"], "results": items}, render)


def _offer_fields(gpus: Any, price: Any, available_from: Any, available_until: Any, min_hours: Any,
                  max_hours: Any, custom_code: bool | None = None) -> dict[str, Any]:
    fields = {"gpus_offered": gpus, "price_per_gpu_hour": price, "available_from": available_from,
              "available_until": available_until, "min_duration_hours": min_hours,
              "max_duration_hours": max_hours, "accepts_custom_code": custom_code}
    return {k: v for k, v in fields.items() if v is not None}


def _offer_options(required: bool) -> Callable:
    def wrap(f: Callable) -> Callable:
        for option in reversed([
            click.option("--gpus", type=int, required=required, help="GPUs (CPU slots) offered."),
            click.option("--price", required=required, help="tUSD per GPU-hour."),
            click.option("--available-from", help="ISO 8601."),
            click.option("--available-until", help="ISO 8601."),
            click.option("--min-hours", help="Shortest job, hours."),
            click.option("--max-hours", help="Longest job, hours."),
            click.option("--custom-code/--no-custom-code", default=None,
                         help="Run consumers' own code (code bundles) on this offer."),
        ]):
            f = option(f)
        return f
    return wrap


def _show_offer(state: State, offer: Mapping[str, Any]) -> None:
    emit(state, offer, lambda: out.print(_offer_rows([offer])))


@offers.command("show")
@click.argument("offer_id", type=int)
@json_option
@pass_state
def offers_show(state: State, offer_id: int) -> None:
    """One offer."""
    client = state.client(auth=bool(state.settings.token))
    _show_offer(state, client.offer(offer_id))


@offers.command("create")
@click.option("--node", type=int, required=True, help="One of your nodes' id.")
@_offer_options(required=True)
@json_option
@pass_state
def offers_create(state: State, node, gpus, price, available_from, available_until, min_hours,
                  max_hours, custom_code) -> None:
    """List one of your nodes' GPUs for rent."""
    fields = _offer_fields(None, None, available_from, available_until, min_hours, max_hours,
                           custom_code)
    _show_offer(state, state.client().offer_create(node=node, gpus_offered=gpus,
                                                   price_per_gpu_hour=price, **fields))


@offers.command("update")
@click.argument("offer_id", type=int)
@_offer_options(required=False)
@json_option
@pass_state
def offers_update(state: State, offer_id, gpus, price, available_from, available_until, min_hours,
                  max_hours, custom_code) -> None:
    """Change an offer's price, GPUs, availability window or whether it runs consumers' code."""
    fields = _offer_fields(gpus, price, available_from, available_until, min_hours, max_hours,
                           custom_code)
    if not fields:
        raise click.UsageError("nothing to change: give --gpus, --price, --available-from, …")
    _show_offer(state, state.client().offer_update(offer_id, **fields))


@offers.command("pause")
@click.argument("offer_id", type=int)
@json_option
@pass_state
def offers_pause(state: State, offer_id: int) -> None:
    """Take an offer off the market (running jobs keep their reservations)."""
    _show_offer(state, state.client().offer_pause(offer_id))


@offers.command("resume")
@click.argument("offer_id", type=int)
@json_option
@pass_state
def offers_resume(state: State, offer_id: int) -> None:
    """Put a paused offer back on the market."""
    _show_offer(state, state.client().offer_resume(offer_id))


# --- job specs: a job file and options ---------------------------------------------------

def spec_options(f: Callable) -> Callable:
    options = [
        click.argument("job_file", required=False, type=click.Path(dir_okay=False)),
        click.option("--name"), click.option("--template", help="See `computemesh templates`."),
        click.option("--bundle", help="Your code in place of a template: a bundle's id, or a "
                                      "local .py/.zip/.tar.gz to upload."),
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
    if "bundle" in given:
        fields["bundle"] = jobfile.bundle_ref(given["bundle"], Path.cwd())
    if "template" not in fields and "bundle" not in fields:
        raise click.UsageError("missing template: give a job file, --template or --bundle")
    if "template" in fields and "bundle" in fields:
        raise click.UsageError("give a template or a bundle, not both")
    fields.setdefault("name", Path(job_file).stem if job_file else
                      fields.get("template") or f"bundle {Path(str(fields['bundle'])).stem}")
    return fields


def upload_progress(state: State, label: str):
    """A progress bar on stderr (none with --json): the callback for resumable uploads."""
    if state.json:
        return None, None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                   TransferSpeedColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=None)

    def update(sent: int, total: int) -> None:
        bar.update(task, completed=sent, total=total)

    return bar, update


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
        out.print(f"[green]Feasible[/]: estimated cost {_money(q.get('estimated_cost'))} tUSD, "
                  f"start {q.get('estimated_start') or 'now'}")
    else:
        out.print("[red]No offer takes this job now.[/]")
    if q.get("candidates"):
        out.print(_table(["OFFER", "NODE", "PROVIDER", "GPU", "GPUS", "REGION", "tUSD/GPU-h",
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
    if isinstance(fields.get("bundle"), str):  # a local file: the quote needs it uploaded
        from .uploads import file_sha256

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
    job = client.submit(jobfile.spec_of(fields))
    if state.json and stream:
        click.echo(json.dumps({"type": "submitted", "id": job["id"], "status": job["status"]}))
    elif not state.json:
        out.print(f"Submitted job {job['id']} ({job['name']}): {job['status']}")
    if job["status"] == "submitted" and job.get("escrow") is not None and fund is not False:
        job = client.fund(job["id"])
        if not state.json:
            escrow = job.get("escrow") or {}
            out.print(f"Funding the escrow with {_money(escrow.get('budget'))} tUSD "
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
    final = _watch(state, client, job["id"], logs=logs)
    if download and final.get("artifact_url"):
        path = client.download_model(final["id"], output)
        if state.json:
            click.echo(json.dumps({"type": "downloaded", "path": str(path)}))
        else:
            out.print(f"Model saved to {path}")


# --- watching --------------------------------------------------------------------------

def _line(job_id: int, snapshot: Mapping[str, Any]) -> str:
    progress = snapshot.get("progress") or {}
    parts = [f"job {job_id}", snapshot.get("status", "?")]
    if progress:
        parts += [f"{progress.get('percent', 0):.0f}%",
                  f"step {progress.get('step')}/{progress.get('total_steps')}"]
        if progress.get("loss") is not None:
            parts.append(f"loss {progress['loss']:.4f}")
        parts.append(f"ETA {_eta(progress.get('eta_seconds'))}")
    if snapshot.get("cost_so_far") is not None:
        parts.append(f"cost {_money(snapshot['cost_so_far'])} tUSD")
    return "  ".join(parts)


def _watch(state: State, client: Client, job_id: int, *, logs: bool = False) -> Job:
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
                               eta=_eta(p.get("eta_seconds")), cost=_money(event.data.get("cost_so_far")),
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
            summary += f"; cost {_money(spend['spent'])} tUSD"
        out.print(summary)
    return job


# --- jobs ------------------------------------------------------------------------------

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
    emit(state, items, lambda: out.print(_table(
        ["ID", "NAME", "STATUS", "TEMPLATE", "NODES×GPUS", "BUDGET tUSD", "CREATED"],
        [(j["id"], j["name"], j["status"], j.get("template"), f"{j.get('nodes')}×{j.get('gpus_per_node')}",
          _money(j.get("budget")), (j.get("created_at") or "")[:19]) for j in items])))


def _render_job(job: Mapping[str, Any]) -> None:
    out.print(f"[bold]Job {job['id']}[/] {job['name']}: {job['status_display']}")
    out.print(f"  {job.get('template')} on {job.get('dataset')}, {job.get('nodes')} node(s) × "
              f"{job.get('gpus_per_node')}, budget {_money(job.get('budget'))} tUSD, "
              f"deadline {job.get('deadline')}")
    p = job.get("progress")
    if p:
        loss = f", loss {p['loss']:.4f}" if p.get("loss") is not None else ""
        out.print(f"  progress {p.get('percent')}% (step {p.get('step')}/{p.get('total_steps')}{loss}), "
                  f"ETA {_eta(p.get('eta_seconds'))}")
        if p.get("metric"):
            out.print(f"  {p['metric'].get('name')}: {p['metric'].get('value')}")
    spend = job.get("spend") or {}
    if spend:
        out.print(f"  spent {_money(spend.get('spent'))} of {_money(spend.get('limit'))} tUSD")
    escrow = job.get("escrow")
    if escrow:
        out.print(f"  escrow {escrow.get('status_display')}: {_money(escrow.get('amount'))} tUSD")
    verification = job.get("verification") or {}
    out.print(f"  verification {verification.get('status', '-')}; model "
              f"{'ready to download' if job.get('artifact_url') else 'not available'}")
    partial = job.get("partial_result")
    if partial and not job.get("artifact_url"):
        out.print(f"  partial result: the checkpoint at step {partial['step']} "
                  f"({partial['size_bytes']:,} bytes): computemesh jobs download {job.get('id')} --partial")
    if job.get("assignments"):
        out.print(_table(["NODE", "RANK", "PROVIDER", "REGION", "GPU", "GPUS", "STATUS"],
                         [(a.get("node_name"), a.get("node_rank"), a.get("provider"), a.get("region"),
                           a.get("gpu_model"), a.get("gpus"), a.get("status")) for a in job["assignments"]]))
    out.print(_table(["AT", "FROM", "TO", "WHY"],
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
    _watch(state, state.client(), job_id, logs=logs)


@jobs.command("logs")
@click.argument("job_id", type=int)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends.")
@json_option
@pass_state
def jobs_logs(state: State, job_id: int, follow: bool) -> None:
    """The job's newest log lines (500 at most), and with --follow the ones to come."""
    client = state.client()
    from .live import watch_job_blocking

    kwargs: dict[str, Any] = {"until": TERMINAL} if follow else {"until": None, "history_only": True}
    for event in watch_job_blocking(client.url, client.token, job_id, **kwargs):
        if event.type == "log":
            click.echo(json.dumps(event.data) if state.json else event.data.get("line", ""))


@jobs.command("metrics")
@click.argument("job_id", type=int)
@click.option("--after-seq", type=click.IntRange(0), default=0, help="Only points after this one.")
@json_option
@pass_state
def jobs_metrics(state: State, job_id: int, after_seq: int) -> None:
    """The job's stored progress points (step, loss, throughput)."""
    points = state.client().metrics(job_id, after_seq=after_seq)
    emit(state, points, lambda: out.print(_table(
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
    emit(state, job, lambda: out.print(f"Job {job_id}: budget {_money(job['budget'])} tUSD, "
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
@json_option
@pass_state
def jobs_statement(state: State, job_id: int) -> None:
    """The settlement: charged, fee, refund, payouts and the transaction."""
    statement = state.client().statement(job_id)
    if statement is None:
        emit(state, None, lambda: out.print(f"Job {job_id} has no settlement statement (yet)."))
        return

    def render() -> None:
        out.print(f"charged {_money(statement.get('charged'))} tUSD, fee {_money(statement.get('fee'))}, "
                  f"refunded {_money(statement.get('refunded'))}; transaction {statement.get('transaction')}")
        payouts = statement.get("payouts") or []
        out.print(_table(["PROVIDER", "ADDRESS", "tUSD"],
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
        emit(state, items, lambda: out.print(_table(
            ["ID", "STATUS", "REASON", "RESOLUTION", "REFUND"],
            [(d["id"], d["status"], d["reason"], d.get("resolution"), _money(d.get("refund_amount")))
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


# --- datasets --------------------------------------------------------------------------

@cli.group()
def datasets() -> None:
    """Your organization's datasets."""


@datasets.command("list")
@json_option
@pass_state
def datasets_list(state: State) -> None:
    """List your organization's datasets."""
    page = state.client().datasets()
    emit(state, page["results"], lambda: out.print(_table(
        ["ID", "NAME", "ROWS", "COLUMNS", "BYTES", "CREATED"],
        [(d["id"], d["name"], d.get("rows"), len(d.get("columns") or []), d.get("size_bytes"),
          (d.get("created_at") or "")[:19]) for d in page["results"]])))


@datasets.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", default="", help="Shown name (the file's extension is kept).")
@click.option("--label-column", default="")
@click.option("--chunk-mb", type=click.IntRange(1, 1024), default=16, show_default=True)
@json_option
@pass_state
def datasets_upload(state: State, path: str, name: str, label_column: str, chunk_mb: int) -> None:
    """Upload a CSV file or a zip of files (class folders of images, …) in resumable
    chunks: run it again after a break and it goes on where the server stopped."""
    suffix = "".join(Path(path).suffixes[-1:])
    if name and not name.lower().endswith(suffix.lower()):
        name += suffix
    client = state.client()
    bar, progress = upload_progress(state, f"Uploading {Path(path).name}")
    if bar is not None:
        with bar:
            d = client.upload_dataset_resumable(path, name=name, label_column=label_column,
                                                chunk_size=chunk_mb << 20, progress=progress)
    else:
        d = client.upload_dataset_resumable(path, name=name, label_column=label_column,
                                            chunk_size=chunk_mb << 20)
    emit(state, d, lambda: out.print(
        f"Dataset {d['id']} ({d['name']}): " + (f"{d.get('entries')} files" if d.get("kind") == "zip"
                                               else f"{d.get('rows')} rows, columns "
                                                    f"{', '.join(d.get('columns') or [])}")))


@datasets.command("delete")
@click.argument("dataset_id", type=int)
@json_option
@pass_state
def datasets_delete(state: State, dataset_id: int) -> None:
    """Delete a dataset and its stored file (refused while an unfinished job uses it)."""
    state.client().delete_dataset(dataset_id)
    emit(state, {"deleted": dataset_id}, lambda: out.print(f"Deleted dataset {dataset_id}."))


# --- code bundles ------------------------------------------------------------------------

@cli.group()
def bundles() -> None:
    """Your own training code (code bundles), used in place of a template."""


def _bundle_rows(items: Sequence[Mapping[str, Any]]) -> Table:
    return _table(["ID", "NAME", "KIND", "RUNTIME", "ENTRY", "BYTES", "SHA-256", "CREATED"],
                  [(b["id"], b["name"], b["kind"], b["runtime"], b["entry"], b["size_bytes"],
                    b["sha256"][:12], (b.get("created_at") or "")[:19]) for b in items])


@bundles.command("list")
@json_option
@pass_state
def bundles_list(state: State) -> None:
    """List your organization's code bundles."""
    items = state.client().bundles()
    emit(state, items, lambda: out.print(_bundle_rows(items)))


@bundles.command("show")
@click.argument("bundle_id", type=int)
@json_option
@pass_state
def bundles_show(state: State, bundle_id: int) -> None:
    """One code bundle with its params schema."""
    b = state.client().bundle(bundle_id)

    def render() -> None:
        out.print(_bundle_rows([b]))
        out.print(json.dumps(b.get("params_schema"), indent=2))

    emit(state, b, render)


@bundles.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--runtime", default="", help="Without a computemesh.toml: the runtime it needs.")
@click.option("--entry", default="", help="Without a computemesh.toml: module:Class "
                                          "(Class for a single .py file).")
@click.option("--params-schema", type=click.Path(exists=True, dir_okay=False),
              help="Without a computemesh.toml: a JSON Schema file for its params.")
@click.option("--chunk-mb", type=click.IntRange(1, 1024), default=16, show_default=True)
@json_option
@pass_state
def bundles_upload(state: State, path: str, runtime: str, entry: str, params_schema: str | None,
                   chunk_mb: int) -> None:
    """Upload a task: a .py file or a .zip/.tar.gz of a package (resumable)."""
    schema = None
    if params_schema:
        try:
            schema = json.loads(Path(params_schema).read_text())
        except ValueError as exc:
            raise click.UsageError(f"{params_schema} is not JSON: {exc}") from None
    client = state.client()
    bar, progress = upload_progress(state, f"Uploading {Path(path).name}")
    if bar is not None:
        with bar:
            b = client.upload_bundle(path, runtime=runtime, entry=entry, params_schema=schema,
                                     chunk_size=chunk_mb << 20, progress=progress)
    else:
        b = client.upload_bundle(path, runtime=runtime, entry=entry, params_schema=schema,
                                 chunk_size=chunk_mb << 20)
    emit(state, b, lambda: out.print(f"Code bundle {b['id']} ({b['name']}): runtime {b['runtime']}, "
                                     f"entry {b['entry']}, sha256 {b['sha256'][:12]}…"))


@bundles.command("delete")
@click.argument("bundle_id", type=int)
@json_option
@pass_state
def bundles_delete(state: State, bundle_id: int) -> None:
    """Delete a code bundle (refused while an unfinished job uses it)."""
    state.client().delete_bundle(bundle_id)
    emit(state, {"deleted": bundle_id}, lambda: out.print(f"Deleted code bundle {bundle_id}."))


@cli.command()
@json_option
@pass_state
def runtimes(state: State) -> None:
    """The provider runtimes a code bundle may ask for."""
    items = state.client(auth=False).runtimes()
    emit(state, items, lambda: out.print(_table(
        ["NAME", "PYTHON", "PACKAGES"],
        [(r["name"], r.get("python", ""), ", ".join(f"{k}{v}" for k, v in r["packages"].items()))
         for r in items])))


# --- providers: nodes, stake, wallets ----------------------------------------------------

@cli.group()
def nodes() -> None:
    """Your machines (providers)."""


def _node_rows(items: Sequence[Mapping[str, Any]]) -> Table:
    return _table(["ID", "NAME", "GPU", "GPUS", "REGION", "STATUS", "LAST HEARTBEAT", "RELIABILITY",
                   "VERIFIED TAGS"],
                  [(n["id"], n["name"], n.get("gpu_model"), n.get("gpu_count"), n.get("region"),
                    n.get("status"), (n.get("last_heartbeat_at") or "")[:19] or None,
                    "new" if n.get("is_new") else n.get("reliability"),
                    ",".join(n.get("compliance_verified") or []) or "-") for n in items])


def _show_node(state: State, node: Mapping[str, Any]) -> None:
    def render() -> None:
        out.print(_node_rows([node]))
        if node.get("agent_token"):
            out.print(f"Agent token (shown this once): {node['agent_token']}")
            out.print(f"Start the agent: computemesh-agent --server {state.settings.url} "
                      f"--token {node['agent_token']}")
    emit(state, node, render)


@nodes.command("list")
@json_option
@pass_state
def nodes_list(state: State) -> None:
    """List your machines with their status and heartbeat."""
    items = list(state.client().iter_nodes())
    emit(state, items, lambda: out.print(_node_rows(items)))


@nodes.command("show")
@click.argument("node_id", type=int)
@json_option
@pass_state
def nodes_show(state: State, node_id: int) -> None:
    """One machine."""
    _show_node(state, state.client().node(node_id))


def _node_options(required: bool) -> Callable:
    def wrap(f: Callable) -> Callable:
        for option in reversed([
            click.option("--name", required=required),
            click.option("--gpu-model", required=required, help="E.g. A100 80GB, RTX 4090, cpu."),
            click.option("--gpu-count", type=int, required=required, help="GPUs (CPU: training slots)."),
            click.option("--gpu-memory", "gpu_memory_gb", type=int, help="GB per GPU (not for cpu)."),
            click.option("--cpu-cores", type=int, required=required),
            click.option("--ram", "ram_gb", type=int, required=required, help="GB."),
            click.option("--disk", "disk_gb", type=int, required=required, help="GB."),
            click.option("--bandwidth", "bandwidth_mbps", type=int, help="Mbit/s."),
            click.option("--region", required=required, help="E.g. EU-DE."),
            click.option("--compliance", "compliance_claimed", multiple=True, help="Claimed tag (repeat)."),
        ]):
            f = option(f)
        return f
    return wrap


def _node_fields(fields: dict[str, Any]) -> dict[str, Any]:
    out_fields = {k: v for k, v in fields.items() if v is not None and v != ()}
    if "compliance_claimed" in out_fields:
        out_fields["compliance_claimed"] = list(out_fields["compliance_claimed"])
    return out_fields


@nodes.command("create")
@_node_options(required=True)
@json_option
@pass_state
def nodes_create(state: State, **fields: Any) -> None:
    """Register a machine; prints its agent token once."""
    _show_node(state, state.client().node_create(**_node_fields(fields)))


@nodes.command("update")
@click.argument("node_id", type=int)
@_node_options(required=False)
@json_option
@pass_state
def nodes_update(state: State, node_id: int, **fields: Any) -> None:
    """Change a machine's description."""
    changes = _node_fields(fields)
    if not changes:
        raise click.UsageError("nothing to change")
    _show_node(state, state.client().node_update(node_id, **changes))


@nodes.command("rotate-token")
@click.argument("node_id", type=int)
@json_option
@pass_state
def nodes_rotate_token(state: State, node_id: int) -> None:
    """Issue a new agent token; the old one stops working."""
    _show_node(state, state.client().node_rotate_token(node_id))


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def stake(ctx: click.Context) -> None:
    """Your organization's stake (providers); subcommands change it."""
    if ctx.invoked_subcommand is not None:
        return
    state = ctx.ensure_object(State)
    s = state.client().stake()
    emit(state, s, lambda: out.print(
        f"staked {_money(s.get('staked'))} tUSD, pending withdrawal {_money(s.get('pending'))}, "
        f"slashed {_money(s.get('slashed'))}; unlocks {s.get('unlock_at') or '-'}; verified tags need "
        f"{_money(s.get('min_stake_for_verified_tags'))} tUSD"))


def _show_op(state: State, op: Mapping[str, Any]) -> None:
    emit(state, op, lambda: out.print(f"{op['kind']} {_money(op.get('amount'))} tUSD: transaction "
                                      f"{op['tx_hash']} ({op['tx_status']})"))


@stake.command("deposit")
@click.argument("amount")
@json_option
@pass_state
def stake_deposit(state: State, amount: str) -> None:
    """Stake AMOUNT tUSD from your custodial wallet."""
    _show_op(state, state.client().stake_deposit(amount))


@stake.command("request-withdrawal")
@click.argument("amount")
@json_option
@pass_state
def stake_request_withdrawal(state: State, amount: str) -> None:
    """Move AMOUNT tUSD of stake to pending withdrawal."""
    _show_op(state, state.client().stake_request_withdrawal(amount))


@stake.command("withdraw")
@json_option
@pass_state
def stake_withdraw(state: State) -> None:
    """Withdraw the pending stake once it has unlocked."""
    _show_op(state, state.client().stake_withdraw())


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def account(ctx: click.Context) -> None:
    """Your organization's balances and its latest money movements."""
    if ctx.invoked_subcommand is not None:
        return
    state = ctx.ensure_object(State)
    a = state.client().account()

    def render() -> None:
        out.print(f"available {_money(a.get('available'))} tUSD, in escrow {_money(a.get('escrowed'))}, "
                  f"spent {_money(a.get('spent'))}, refunded {_money(a.get('refunded'))}, "
                  f"earned {_money(a.get('earned'))}")
        moves = (a.get("movements") or [])[:20]
        if moves:
            out.print(_table(["WHEN", "WHAT", "tUSD", "JOB", "TRANSACTION"],
                             [(m.get("at", "")[:19].replace("T", " "), m.get("description"),
                               _money(m.get("amount")), m.get("job"),
                               (m.get("transaction") or "") + (" (pending)" if m.get("pending") else ""))
                              for m in moves], title="Latest movements"))
    emit(state, a, render)


@account.command("faucet")
@json_option
@pass_state
def account_faucet(state: State) -> None:
    """Get test tUSD in your custodial wallet (development chains only)."""
    grant = state.client().faucet()
    emit(state, grant, lambda: out.print(
        f"{_money(grant.get('amount'))} tUSD sent to {grant.get('address')} "
        f"(transaction {grant.get('transaction') or 'pending'})"))


@cli.group(invoke_without_command=True)
@json_option
@click.pass_context
def wallets(ctx: click.Context) -> None:
    """Your organization's wallets (link one from the browser: it signs with your wallet)."""
    if ctx.invoked_subcommand is not None:
        return
    state = ctx.ensure_object(State)
    items = state.client().wallets()
    emit(state, items, lambda: out.print(_table(
        ["ID", "ADDRESS", "KIND", "PAYOUT"],
        [(w["id"], w["address"], w["kind"], "yes" if w.get("is_payout") else "") for w in items])))


@wallets.command("payout")
@click.argument("wallet_id", type=int, required=False)
@json_option
@pass_state
def wallets_payout(state: State, wallet_id: int | None) -> None:
    """Where you are paid (providers); with WALLET_ID, be paid there (after the change delay)."""
    client = state.client()
    p = client.set_payout_wallet(wallet_id) if wallet_id is not None else client.payout()
    pending = ""
    if p.get("pending_address"):
        pending = f"; changing to {p['pending_address']} at {p['effective_at']}"
    emit(state, p, lambda: out.print(f"paid to {p.get('payout_address') or '-'}{pending}"))


# --- entry point: one line per error, documented exit codes ------------------------------

def _fail(message: str, code: int, body: Mapping[str, Any] | None = None, *,
          as_json: bool = False) -> int:
    click.echo("error: " + " ".join(message.split()), err=True)
    if as_json:
        click.echo(json.dumps({"error": body or {"detail": message}}))
    return code


def main(argv: list[str] | None = None) -> None:
    state = State(None)
    try:
        code = cli.main(args=argv, prog_name="computemesh", standalone_mode=False, obj=state)
        code = code if isinstance(code, int) else 0
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # click 8.2+: a bare group prints its help
            click.echo(exc.format_message())
            sys.exit(EXIT_USAGE)
        code = _fail(exc.format_message(), EXIT_USAGE, as_json=state.json)
    except click.ClickException as exc:
        code = _fail(exc.format_message(), EXIT_USAGE, as_json=state.json)
    except (click.exceptions.Abort, KeyboardInterrupt):
        code = _fail("interrupted", 130)
    except ComputeMeshError as exc:
        body = exc.as_dict() if hasattr(exc, "as_dict") else {"detail": exc.message}
        message = exc.message
        method, path = getattr(exc, "method", ""), getattr(exc, "path", "")
        if method and path:
            message += f" ({exc.status_code} on {method} {path})"  # type: ignore[attr-defined]
        code = _fail(message, exc.exit_code, body, as_json=state.json)
    except OSError as exc:
        code = _fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}",
                     EXIT_USAGE if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError)
                     else EXIT_NETWORK, as_json=state.json)
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
