"""The market: the training templates and the offers (a consumer's search, a provider's own
offers and their management)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click
from rich.table import Table

from .common import State, cli, emit, json_option, out, pass_state, table

# --- templates -----------------------------------------------------------------------

@cli.command()
@json_option
@pass_state
def templates(state: State) -> None:
    """The training templates, their metric and bundled sample datasets."""
    items = state.client(auth=False).templates()
    emit(state, items, lambda: out.print(table(
        ["NAME", "TITLE", "SECTOR", "METRIC", "SAMPLES (dataset: sample:<name>)"],
        [(t["name"], t.get("title"), t.get("sector"), t.get("metric"),
          ", ".join(s.get("name", "") for s in t.get("samples") or [])) for t in items])))


# --- offers --------------------------------------------------------------------------

SORTS = {"price": "price_per_gpu_hour", "memory": "gpu_memory_gb", "reliability": "reliability"}


def _offer_rows(items: Sequence[Mapping[str, Any]], *, status: bool = False) -> Table:
    # A provider's own list shows each offer's status (paused ones are listed there only).
    return table(
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
