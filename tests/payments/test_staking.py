"""Provider stake from the custodial wallet, and slashing for disputes, on the in-process
chain with the platform's own services, sender and indexer."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings

from marketplace.chain import deploy, indexer, sender
from marketplace.chain.client import ChainError
from marketplace.errors import Conflict, MarketError
from marketplace.models import (
    ChainCursor,
    ChainTransaction,
    Dispute,
    DisputeSlash,
    Escrow,
    Offer,
    ProviderStake,
    StakeEvent,
    StakeOperation,
)
from marketplace.services import staking
from workers.tasks_chain import dispute_slash as dispute_slash_task

from .support import assignment, committed, funded_job, units

pytestmark = pytest.mark.django_db
REPLAY = Dispute.Reason.REPLAY_MISMATCH


def _mined(op: StakeOperation) -> None:
    assert sender.wait(op.transaction).status == ChainTransaction.Status.CONFIRMED
    indexer.index_events()


@pytest.fixture
def staker(wallets, provider_org, carol_offer):
    """carol's provider organization with 1,000 tUSD in its custodial wallet."""
    address = provider_org.wallets.get().address
    deploy.mint_to(address, Decimal("1000"))
    return address


def stake_of(address: str):
    return tuple(deploy.stake_contract().functions.stakes(address).call())


def test_stake_from_the_custodial_wallet_once_per_request(wallets, staker, provider_org, carol_offer):
    with committed():
        op = staking.stake_deposit(organization=provider_org, amount="250",
                                   request_id="00000000-0000-0000-0000-000000000001")
    _mined(op)
    # The same request again (a double click, an API retry): nothing new is sent.
    with committed():
        again = staking.stake_deposit(organization=provider_org, amount="250",
                                      request_id="00000000-0000-0000-0000-000000000001")
    assert again.pk == op.pk
    assert stake_of(staker) == (units("250"), 0, 0)
    assert wallets.balance(staker) == units("750")
    row = ProviderStake.objects.get(address=staker)
    assert (row.organization, row.staked, row.pending) == (provider_org, Decimal("250"), Decimal("0"))
    assert list(row.events.values_list("kind", flat=True)) == ["staked"]
    # Offers carry the stake for the search.
    assert Offer.objects.get(pk=carol_offer.pk).provider_stake == Decimal("250")
    assert staking.provider_stake_total(provider_org.pk) == Decimal("250")
    # The indexer re-reading the same blocks applies nothing twice.
    ChainCursor.objects.update(last_block=0)
    indexer.index_events()
    assert ProviderStake.objects.get(address=staker).staked == Decimal("250")
    assert StakeEvent.objects.count() == 1


def test_bad_stake_input_is_a_clear_error(wallets, staker, provider_org, healthcare):
    for amount, field in (("0", "amount"), ("-5", "amount"), ("abc", "amount"), ("1.0000001", None)):
        with pytest.raises(MarketError) as excinfo:
            staking.stake_deposit(organization=provider_org, amount=amount)
        assert excinfo.value.status_code == 400 and (field is None or excinfo.value.field == field)
    with pytest.raises(Conflict, match="less than"):
        staking.stake_deposit(organization=provider_org, amount="5000")
    with pytest.raises(MarketError, match="UUID"):
        staking.stake_deposit(organization=provider_org, amount="1", request_id="not-a-uuid")
    with pytest.raises(MarketError, match="Only provider"):
        staking.stake_deposit(organization=healthcare, amount="1")
    assert not StakeOperation.objects.exists()
    assert stake_of(staker) == (0, 0, 0)


def test_withdrawal_is_refused_before_the_delay_and_paid_after(wallets, staker, provider_org):
    with committed():
        op = staking.stake_deposit(organization=provider_org, amount="100")
    _mined(op)
    with pytest.raises(MarketError, match="staked; you cannot withdraw"):
        staking.stake_request_withdrawal(organization=provider_org, amount="101")
    with pytest.raises(Conflict, match="Nothing is pending"):
        staking.stake_withdraw(organization=provider_org)
    with committed():
        op = staking.stake_request_withdrawal(organization=provider_org, amount="40")
    _mined(op)
    row = ProviderStake.objects.get(address=staker)
    assert (row.staked, row.pending) == (Decimal("60"), Decimal("40"))
    _, _, unlock = stake_of(staker)
    assert int(row.unlock_at.timestamp()) == unlock
    # Early: refused with the time it unlocks, nothing sent.
    sent = ChainTransaction.objects.count()
    with pytest.raises(Conflict, match="unlocks at") as excinfo:
        staking.stake_withdraw(organization=provider_org)
    assert excinfo.value.code == "withdrawal_locked"
    assert ChainTransaction.objects.count() == sent
    wallets.travel_to(unlock + 1)
    with committed():
        op = staking.stake_withdraw(organization=provider_org)
    _mined(op)
    assert wallets.balance(staker) == units("940")  # 1,000 − 100 staked + 40 withdrawn
    row.refresh_from_db()
    assert (row.staked, row.pending, row.unlock_at) == (Decimal("60"), Decimal("0"), None)
    assert settings.STAKE_WITHDRAW_DELAY_S > 0


def _dispute(job, node, provider, minutes=30):
    a = assignment(job, node, minutes=minutes, price="1.20")
    return Dispute.objects.create(job=job, assignment=a, provider=provider, reason=REPLAY,
                                  detail="replayed steps diverge")


def test_a_retried_slash_task_slashes_once_to_the_treasury_never_the_consumer(
        wallets, staker, provider_org, healthcare, carol_node):
    # Issue 12, item 5: slashes used to go to the escrow's consumer address, so a consumer
    # running a node on its own job could frame an honest peer and collect the slash.
    with committed():
        op = staking.stake_deposit(organization=provider_org, amount="100")
    _mined(op)
    job = funded_job(healthcare, budget="50")
    consumer = Escrow.objects.get(job=job).consumer_address
    treasury = deploy.treasury_address()
    before, treasury_before = wallets.balance(consumer), wallets.balance(treasury)
    dispute = _dispute(job, carol_node, provider_org)

    # 30 min × 1 GPU × 1.20 tUSD/GPU-h = 0.60 tUSD of work × SLASH_FACTOR 2.
    assert dispute_slash_task(dispute.pk) == "slashed"
    assert dispute_slash_task(dispute.pk) == "slashed"  # the retry finds it done

    dispute.refresh_from_db()
    slash = DisputeSlash.objects.get(dispute=dispute)
    assert (dispute.status, dispute.slash_amount) == ("slashed", Decimal("1.2"))
    assert dispute.slash_tx == slash.transaction.tx_hash and dispute.resolved_at is not None
    assert slash.recipient == treasury != consumer
    assert ChainTransaction.objects.filter(purpose="slash").count() == 1
    assert wallets.balance(consumer) == before
    assert wallets.balance(treasury) == treasury_before + units("1.2")
    assert StakeEvent.objects.get(kind="slashed", dispute=dispute).recipient == treasury
    assert stake_of(staker) == (units("98.8"), 0, 0)
    assert deploy.stake_contract().functions.slashedFor(bytes.fromhex(slash.key[2:])).call() == units("1.2")
    row = ProviderStake.objects.get(address=staker)
    assert (row.staked, row.slashed_total) == (Decimal("98.8"), Decimal("1.2"))
    assert StakeEvent.objects.filter(kind="slashed", dispute=dispute).count() == 1
    assert job.events.filter(reason="dispute_slashed").count() == 1
    # The chain's own guard: the same dispute id again is refused before anything is stored.
    call = deploy.stake_contract().functions.slash(staker, units("1"), 1, bytes.fromhex(slash.key[2:]),
                                                   consumer)
    with pytest.raises(ChainError) as excinfo:
        sender.send(key=deploy.operator_key(), purpose="slash", call=call)
    assert excinfo.value.code == "reverted"
    assert stake_of(staker) == (units("98.8"), 0, 0)


def test_a_slash_sent_but_not_seen_through_is_finished_by_the_retry(
        wallets, staker, provider_org, healthcare, carol_node, monkeypatch):
    """A worker killed after storing the slash and before broadcasting it (the commit hook
    never ran here; the wait is where it dies): the retry sends the stored transaction, not
    a second one."""
    with committed():
        op = staking.stake_deposit(organization=provider_org, amount="100")
    _mined(op)
    job = funded_job(healthcare, budget="50")
    dispute = _dispute(job, carol_node, provider_org, minutes=600)  # 12 tUSD × 2 = 24

    def killed(*args, **kwargs):
        raise SystemExit("worker killed")

    with monkeypatch.context() as m:
        m.setattr(sender, "wait", killed)
        with pytest.raises(SystemExit):
            staking.dispute_slash(dispute_id=dispute.pk)
    slash = DisputeSlash.objects.get(dispute=dispute)
    assert slash.transaction.status == ChainTransaction.Status.SIGNED
    assert stake_of(staker) == (units("100"), 0, 0)

    assert dispute_slash_task(dispute.pk) == "slashed"
    assert ChainTransaction.objects.filter(purpose="slash").count() == 1
    assert stake_of(staker) == (units("76"), 0, 0)


def test_a_dispute_not_attributed_to_a_node_is_never_slashed_automatically(
        wallets, staker, provider_org, healthcare, carol_node):
    with committed():
        op = staking.stake_deposit(organization=provider_org, amount="100")
    _mined(op)
    job = funded_job(healthcare, budget="50")
    dispute = _dispute(job, carol_node, provider_org)
    Dispute.objects.filter(pk=dispute.pk).update(attributed=False)
    assert dispute_slash_task(dispute.pk) == "open"
    assert dispute_slash_task(dispute.pk) == "open"
    assert not DisputeSlash.objects.filter(dispute=dispute).exists()
    assert not ChainTransaction.objects.filter(purpose="slash").exists()
    assert stake_of(staker) == (units("100"), 0, 0)
    assert job.events.filter(reason="dispute_unattributed").exists()


def test_slash_goes_to_the_treasury_when_the_consumer_address_is_unknown(
        wallets, staker, provider_org, healthcare, carol_node):
    with committed():
        op = staking.stake_deposit(organization=provider_org, amount="10")
    _mined(op)
    job = funded_job(healthcare, budget="50")
    Escrow.objects.filter(job=job).update(consumer_address="")
    dispute = _dispute(job, carol_node, provider_org, minutes=6000)  # 240 tUSD: capped at 10
    treasury = deploy.treasury_address()
    before = wallets.balance(treasury)
    staking.dispute_slash(dispute_id=dispute.pk)
    dispute.refresh_from_db()
    assert (dispute.status, dispute.slash_amount) == ("slashed", Decimal("10"))
    assert wallets.balance(treasury) == before + units("10")


def test_a_provider_without_stake_leaves_the_dispute_open_with_a_note(
        wallets, provider_org, healthcare, carol_node):
    job = funded_job(healthcare, budget="50")
    dispute = _dispute(job, carol_node, provider_org)
    assert dispute_slash_task(dispute.pk) == "open"
    assert dispute_slash_task(dispute.pk) == "open"
    assert "no stake" in DisputeSlash.objects.get(dispute=dispute).note
    assert job.events.filter(reason="dispute_no_stake").count() == 1
    assert not ChainTransaction.objects.filter(purpose="slash").exists()


def test_a_dismissed_dispute_is_not_slashed(wallets, staker, provider_org, healthcare, carol_node,
                                            admin_user):
    with committed():
        op = staking.stake_deposit(organization=provider_org, amount="10")
    _mined(op)
    dispute = _dispute(funded_job(healthcare, budget="50"), carol_node, provider_org)
    staking.dispute_dismiss(dispute=dispute, actor=admin_user)
    assert dispute_slash_task(dispute.pk) == "dismissed"
    assert stake_of(staker) == (units("10"), 0, 0)
    with pytest.raises(Conflict):
        staking.dispute_dismiss(dispute=dispute, actor=admin_user)
