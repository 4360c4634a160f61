"""Providers: their machines (nodes, agent tokens) and their stake."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click
from rich.table import Table

from .common import State, cli, emit, json_option, money, out, pass_state, table


@cli.group()
def nodes() -> None:
    """Your machines (providers)."""


def _node_rows(items: Sequence[Mapping[str, Any]]) -> Table:
    return table(["ID", "NAME", "GPU", "GPUS", "REGION", "STATUS", "LAST HEARTBEAT", "RELIABILITY",
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
        f"staked {money(s.get('staked'))} tUSD, pending withdrawal {money(s.get('pending'))}, "
        f"slashed {money(s.get('slashed'))}; unlocks {s.get('unlock_at') or '-'}; verified tags need "
        f"{money(s.get('min_stake_for_verified_tags'))} tUSD"))


def _show_op(state: State, op: Mapping[str, Any]) -> None:
    emit(state, op, lambda: out.print(f"{op['kind']} {money(op.get('amount'))} tUSD: transaction "
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
