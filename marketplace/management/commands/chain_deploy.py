"""Deploy the escrow and the provider stake (and, on a development chain, the tUSD token) and
record the addresses.

    python manage.py chain_deploy [--dev-wallets] [--mint 10000]

--dev-wallets (development chains only) gives every organization a custodial development
wallet if it has none, ether for gas, consumers `--mint` tUSD and providers
`--provider-mint` tUSD (to stake); `--provider-stake N` then stakes N tUSD for each provider
(once per chain: running it again stakes nothing more).
"""

import uuid
from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from marketplace.chain import deploy, indexer, sender
from marketplace.chain.client import chain_id
from marketplace.errors import MarketError
from marketplace.models import ChainTransaction, Organization
from marketplace.services import wallets
from marketplace.services.staking import stake_deposit


class Command(BaseCommand):
    help = "Deploy the payment contracts on the configured chain and record their addresses."

    def add_arguments(self, parser):
        parser.add_argument("--dev-wallets", action="store_true",
                            help="development chains: custodial wallets, gas and tUSD for every organization")
        parser.add_argument("--mint", type=Decimal, default=Decimal("10000"),
                            help="tUSD each consumer organization's development wallet holds (default 10000)")
        parser.add_argument("--provider-mint", type=Decimal, default=Decimal("1000"),
                            help="tUSD each provider organization's development wallet holds (default 1000)")
        parser.add_argument("--provider-stake", type=Decimal, default=Decimal("0"),
                            help="with --dev-wallets: tUSD each provider stakes (default 0: none)")
        parser.add_argument("--force", action="store_true",
                            help="deploy new contracts even if recorded ones exist")

    def handle(self, *args, dev_wallets=False, mint=Decimal("10000"), provider_mint=Decimal("1000"),
               provider_stake=Decimal("0"), force=False, **options):
        try:
            lost = deploy.chain_identity_check(force=True)
            if lost:
                self.stderr.write(f"The recorded contracts' chain is gone ({lost}): their escrows are marked "
                                  "'chain lost' for staff to resolve; deploying afresh.")
            found = deploy.deploy(force=force)
            self.stdout.write(f"chain {chain_id()}{' (fresh)' if lost else ''}: token {found['token']}, "
                              f"escrow {found['escrow']}, stake {found['stake']}, "
                              f"operator {deploy.operator_address()}")
            if dev_wallets:
                for line in wallets.dev_wallets(mint=mint, provider_mint=provider_mint):
                    self.stdout.write("  " + line)
                if provider_stake > 0:
                    for line in _dev_stakes(provider_stake):
                        self.stdout.write("  " + line)
        except MarketError as exc:
            raise CommandError(exc.message) from exc


def _dev_stakes(amount: Decimal) -> list[str]:
    """Each provider stakes `amount` from its development wallet, once per chain (the
    request id is derived from the chain and the organization)."""
    out, ops = [], []
    for org in Organization.objects.filter(kind=Organization.Kind.PROVIDER).order_by("pk"):
        request_id = uuid.uuid5(uuid.NAMESPACE_URL, f"computemesh:dev-stake:{chain_id()}:{org.pk}")
        with transaction.atomic():
            ops.append(stake_deposit(organization=org, amount=amount, request_id=request_id))
        out.append(f"{org.name}: staked {amount} tUSD ({ops[-1].transaction.tx_hash})")
    # Each wallet's approval goes before its stake: see them through in nonce order.
    pending = ChainTransaction.objects.filter(sender__in=[op.address for op in ops], lost_reason="").exclude(
        status__in=(ChainTransaction.Status.CONFIRMED, ChainTransaction.Status.REVERTED))
    for tx in pending.order_by("sender", "nonce"):
        sender.wait(tx)
    indexer.index_events()
    return out
