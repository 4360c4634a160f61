"""Settlements pay the payout wallet that was in effect when the job was metered: a change
an admin asks for takes effect PAYOUT_CHANGE_DELAY_S later (issue 12, item 8), shown on the
in-process chain by what the escrow contract owes each address."""

import time

from eth_account import Account

from marketplace.chain import indexer
from marketplace.models import Wallet
from marketplace.services import payments
from marketplace.services.wallets import wallet_set_payout

from .support import committed, completed_job


def _settle_twice() -> None:
    for _ in range(2):  # a retried pass prepares and pays nothing twice
        payments.settlements_prepare()
        with committed():
            payments.settlement_batch_send()
        indexer.index_events()


def test_settlements_pay_the_old_wallet_until_the_delay_is_over(wallets, alice, carol, carol_node,
                                                               healthcare, settings):
    """On the chain: a job settled while the change is pending credits the old wallet; one
    settled after the delay, the new one. Each settles once however often the pass runs."""
    settings.PAYOUT_CHANGE_DELAY_S = 3
    org = carol_node.provider
    old = org.wallets.get(is_payout=True).address
    new = Wallet.objects.create(organization=org, address=Account.create().address, kind="external")
    wallet_set_payout(wallet=new, actor=carol)

    first = completed_job(healthcare, carol_node, minutes=30, price="1.20")
    _settle_twice()
    assert wallets.owed(old) == 570_000 and wallets.owed(new.address) == 0  # 0.60 less 5 %

    time.sleep(3.2)  # the delay, in real time
    second = completed_job(healthcare, carol_node, minutes=60, price="1.20")
    _settle_twice()
    assert wallets.owed(new.address) == 1_140_000 and wallets.owed(old) == 570_000
    assert [p.address for p in first.settlement.payouts.all()] == [old]
    assert [p.address for p in second.settlement.payouts.all()] == [new.address]
