"""Who you are and what you hold: login, logout, whoami, shell completion, the account's
balances (and the faucet) and the organization's wallets."""

from __future__ import annotations

import click

from .. import config
from ..errors import AuthenticationError
from .common import State, cli, emit, json_option, money, out, pass_state, table

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
    addresses = [w["address"] for w in client.wallets()]
    org = me.get("organization")
    data = {"url": s.url, "username": me["username"], "organization": org, "role": me.get("role"),
            "is_staff": me.get("is_staff", False), "token_from": s.token_from,
            "wallets": addresses}
    emit(state, data, lambda: out.print(
        f"{me['username']} at {s.url}"
        + (f", {me.get('role')} of {org['name']} ({org['kind']}, #{org['id']})" if org else "")
        + (" (staff)" if me.get("is_staff") else "")
        + (f"; wallet {', '.join(addresses)}" if addresses else "")))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(computemesh completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "computemesh", "_COMPUTEMESH_COMPLETE").source())


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
        out.print(f"available {money(a.get('available'))} tUSD, in escrow {money(a.get('escrowed'))}, "
                  f"spent {money(a.get('spent'))}, refunded {money(a.get('refunded'))}, "
                  f"earned {money(a.get('earned'))}")
        moves = (a.get("movements") or [])[:20]
        if moves:
            out.print(table(["WHEN", "WHAT", "tUSD", "JOB", "TRANSACTION"],
                             [(m.get("at", "")[:19].replace("T", " "), m.get("description"),
                               money(m.get("amount")), m.get("job"),
                               (m.get("transaction") or "") + (" (pending)" if m.get("pending") else ""))
                              for m in moves], title="Latest movements"))
    emit(state, a, render)


@account.command("statement")
@click.argument("month", metavar="YYYY-MM")
@click.option("--pdf", "fmt", flag_value="pdf", help="A PDF instead of CSV.")
@click.option("-o", "--output", type=click.Path(), default=".", show_default=True,
              help="A folder or a file name.")
@json_option
@pass_state
def account_statement(state: State, month: str, fmt: str | None, output: str) -> None:
    """Save a month's money movements as CSV (or --pdf)."""
    try:
        year, number = (int(part) for part in month.split("-"))
    except ValueError:
        raise click.BadParameter("give the month as YYYY-MM, e.g. 2026-12", param_hint="MONTH") from None
    path = state.client().month_statement_file(year, number, fmt or "csv", output)
    emit(state, {"path": str(path)}, lambda: out.print(f"Statement saved to {path}"))


@account.command("faucet")
@json_option
@pass_state
def account_faucet(state: State) -> None:
    """Get test tUSD in your custodial wallet (development chains only)."""
    grant = state.client().faucet()
    emit(state, grant, lambda: out.print(
        f"{money(grant.get('amount'))} tUSD sent to {grant.get('address')} "
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
    emit(state, items, lambda: out.print(table(
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
