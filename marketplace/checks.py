"""Deployment checks of the payment settings (`manage.py check --deploy`)."""

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def chain_settings(app_configs, **kwargs):
    if not settings.ESCROW_ENABLED:
        return []
    found = []
    if not settings.CHAIN_RPC_URL:
        found.append(Warning(
            "CHAIN_RPC_URL is empty: payments would use an in-process development chain whose "
            "money is not real and disappears on restart.",
            hint="Set CHAIN_RPC_URL to your chain's JSON-RPC node, or ESCROW_ENABLED=0.",
            id="computemesh.W001"))
    if not settings.CHAIN_OPERATOR_KEY:
        found.append(Warning(
            "CHAIN_OPERATOR_KEY is empty: only development chains work, with a public key.",
            hint="Set CHAIN_OPERATOR_KEY to the operator account's private key (kept in a secret store).",
            id="computemesh.W002"))
    return found
