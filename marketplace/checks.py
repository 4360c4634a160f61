"""Deployment checks of the payment settings (`manage.py check --deploy`).

Errors, not warnings: each of these lets someone else move the platform's money (a public
development key or treasury) or leaves one hot key able to do everything (docs/operations.md,
"Chain keys"). The checks read settings only; they do not reach the chain.
"""

from django.conf import settings
from django.core.checks import Error, Tags, register
from eth_account import Account
from eth_utils import is_address, to_checksum_address


@register(Tags.security, deploy=True)
def chain_settings(app_configs, **kwargs):
    if not settings.ESCROW_ENABLED:
        return []
    found = []
    if not settings.CHAIN_RPC_URL:
        found.append(Error(
            "CHAIN_RPC_URL is empty: payments would use an in-process development chain whose "
            "money is not real and disappears on restart.",
            hint="Set CHAIN_RPC_URL to your chain's JSON-RPC node, or ESCROW_ENABLED=0.",
            id="computemesh.E001"))
    operator = None
    if not settings.CHAIN_OPERATOR_KEY:
        found.append(Error(
            "CHAIN_OPERATOR_KEY is empty: only development chains work, with a public key.",
            hint="Set CHAIN_OPERATOR_KEY to the operator account's private key (kept in a secret store).",
            id="computemesh.E002"))
    else:
        try:
            operator = Account.from_key(settings.CHAIN_OPERATOR_KEY).address
        except (ValueError, TypeError) as exc:  # eth-keys' errors are ValueError subclasses
            found.append(Error(f"CHAIN_OPERATOR_KEY is not a private key ({type(exc).__name__}).",
                               id="computemesh.E002"))
    roles = {"operator": operator}
    for setting, role, what in (
            ("CHAIN_TREASURY_ADDRESS", "treasury", "the development treasury, whose key is public"),
            ("CHAIN_ADMIN_ADDRESS", "admin", "the operator's hot key, which could then grant itself "
                                             "every role"),
            ("CHAIN_PAUSER_ADDRESS", "pauser", "the operator's hot key")):
        value = getattr(settings, setting)
        if not value:
            found.append(Error(f"{setting} is empty: the contracts would be deployed with {what}.",
                               hint=f"Set {setting} to the {role}'s address (docs/operations.md, "
                                    "\"Chain keys\").", id="computemesh.E003"))
        elif not is_address(value):
            found.append(Error(f"{setting} is not an address: {value!r}.", id="computemesh.E003"))
        else:
            roles[role] = to_checksum_address(value)
    keys = {r: a for r, a in roles.items() if r != "treasury" and a}
    shared = {a for a in keys.values() if list(keys.values()).count(a) > 1}
    if shared:
        found.append(Error(
            "One address holds several contract roles: "
            + ", ".join(sorted(r for r, a in keys.items() if a in shared))
            + ". Admin, pauser and operator must be three different keys.",
            hint="Give the admin role to a cold key or multisig and the pauser its own key; see "
                 "docs/operations.md, \"Chain keys\".", id="computemesh.E004"))
    return found
