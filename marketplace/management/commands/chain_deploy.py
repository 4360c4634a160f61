"""Deploy the escrow and the provider stake (and, on a development chain, the tUSD token) and
record the addresses.

    python manage.py chain_deploy [--dev-wallets] [--mint 10000]

--dev-wallets (development chains only) gives every organization a custodial development
wallet if it has none, ether for gas, consumers `--mint` tUSD and providers
`--provider-mint` tUSD (to stake).
"""

from decimal import Decimal

from django.core.management.base import BaseCommand, CommandError

from marketplace.errors import MarketError


class Command(BaseCommand):
    help = "Deploy the payment contracts on the configured chain and record their addresses."

    def add_arguments(self, parser):
        parser.add_argument("--dev-wallets", action="store_true",
                            help="development chains: custodial wallets, gas and tUSD for every organization")
        parser.add_argument("--mint", type=Decimal, default=Decimal("10000"),
                            help="tUSD each consumer organization's development wallet holds (default 10000)")
        parser.add_argument("--provider-mint", type=Decimal, default=Decimal("1000"),
                            help="tUSD each provider organization's development wallet holds (default 1000)")
        parser.add_argument("--force", action="store_true",
                            help="deploy new contracts even if recorded ones exist")

    def handle(self, *args, dev_wallets=False, mint=Decimal("10000"), provider_mint=Decimal("1000"),
               force=False, **options):
        from marketplace.chain import deploy
        from marketplace.chain.client import chain_id

        try:
            fresh = deploy.chain_reset_detected()
            found = deploy.deploy(force=force)
            self.stdout.write(f"chain {chain_id()}{' (fresh)' if fresh else ''}: token {found['token']}, "
                              f"escrow {found['escrow']}, stake {found['stake']}, "
                              f"operator {deploy.operator_address()}")
            if dev_wallets:
                for line in deploy.dev_wallets(mint=mint, provider_mint=provider_mint):
                    self.stdout.write("  " + line)
        except MarketError as exc:
            raise CommandError(exc.message) from exc
