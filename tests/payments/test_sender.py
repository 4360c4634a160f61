"""The platform's sender: nonces handed out by the database under a row lock, the signed
transaction stored before it is broadcast, and stale ones re-broadcast unchanged."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from eth_account import Account
from web3 import Web3

from marketplace.chain import client, deploy, sender
from marketplace.chain.client import ChainError
from marketplace.models import ChainAccount, ChainTransaction

from .support import committed

SINK = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture
def funded_key(chain) -> str:
    account = Account.create()
    deploy.give_gas(account.address)
    return "0x" + account.key.hex().removeprefix("0x")


def unfinished() -> int:
    return ChainTransaction.objects.filter(status__in=("signed", "sent")).count()


@pytest.mark.django_db(transaction=True)
def test_two_threads_sending_with_one_key_get_distinct_consecutive_nonces(funded_key):
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def send_twenty():
        try:
            start.wait()
            for _ in range(20):
                sender.send(key=funded_key, purpose="gas", tx={"to": SINK, "value": 1})
        except BaseException as exc:  # noqa: BLE001 (reported by the test thread)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send_twenty) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors

    # The in-process EVM refuses a nonce ahead of the next one (a node would queue it): a
    # thread that broadcast out of turn left its row signed, for the periodic re-send.
    for _ in range(5):
        if not unfinished():
            break
        sender.resend_stale(older_than_s=0)
    address = Account.from_key(funded_key).address
    rows = list(ChainTransaction.objects.filter(sender=address).order_by("nonce"))
    assert [t.nonce for t in rows] == list(range(40))
    assert len({t.tx_hash for t in rows}) == 40
    assert all(sender.check(t).status == "confirmed" for t in rows)
    assert client.w3().eth.get_transaction_count(address) == 40
    assert ChainAccount.objects.get(address=address).next_nonce == 40


@pytest.mark.django_db
def test_the_signed_transaction_is_stored_before_broadcast_and_resent_unchanged(funded_key, monkeypatch):
    def node_down(raw):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(client.w3().eth, "send_raw_transaction", node_down)
    with committed():
        stored = sender.send(key=funded_key, purpose="gas", tx={"to": SINK, "value": 7})
    monkeypatch.undo()

    stored.refresh_from_db()
    assert stored.status == "signed" and "Connection refused" in stored.error and stored.broadcasts == 1
    assert Web3.keccak(hexstr=stored.raw).hex().removeprefix("0x") == stored.tx_hash[2:]
    assert sender.resend_stale() == 0  # not stale yet (CHAIN_RESEND_AFTER_S)

    assert sender.resend_stale(older_than_s=0) == 1

    stored.refresh_from_db()
    assert (stored.status, stored.error, stored.broadcasts) == ("sent", "", 2)
    assert sender.wait(stored, timeout_s=5).status == "confirmed"
    assert client.w3().eth.get_balance(SINK) >= 7
    assert ChainTransaction.objects.filter(sender=stored.sender).count() == 1


@pytest.mark.django_db
def test_a_transaction_the_contract_refuses_up_front_is_neither_stored_nor_given_a_nonce(chain):
    operator = deploy.operator_address()
    unknown_job = bytes(32)

    with pytest.raises(ChainError) as refused:
        sender.send(key=deploy.operator_key(), purpose="refund",
                    call=chain.escrow.functions.operatorRefund(unknown_job))

    assert refused.value.code == "reverted" and "refused" in refused.value.message
    assert not ChainTransaction.objects.filter(sender=operator).exists()
    with committed():
        ok = sender.send(key=deploy.operator_key(), purpose="gas", tx={"to": SINK, "value": 1})
    assert ok.nonce == client.w3().eth.get_transaction_count(operator) - 1
