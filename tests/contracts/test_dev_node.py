"""The contracts on a real JSON-RPC node (hardhat 3, started by tests/chain_node.py) through
web3's HTTPProvider with the node's unlocked accounts: fund → settle → withdraw, a consumer's
refund after its deadline (the node's clock moved with evm_increaseTime), and a custom error
as web3 reports it from a node."""

import pytest
from web3 import Web3
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD

from tests.chain_node import ACCOUNTS, CHAIN_ID, dev_node

from .conftest import decode_error, revert_data, settlement
from .support import REFUNDED, SETTLED, USD, deploy_escrow, load_artifact

pytestmark = pytest.mark.integration


def test_fund_settle_withdraw_and_refund_on_a_real_node():
    with dev_node() as rpc_url:
        w3 = Web3(Web3.HTTPProvider(rpc_url))
        assert w3.eth.chain_id == CHAIN_ID
        admin, operator, treasury, alice, carol = w3.eth.accounts[:5]
        assert admin == ACCOUNTS[0][0]
        d = deploy_escrow(w3, admin=admin, operator=operator, treasury=treasury, keys=dict(ACCOUNTS))
        # The node runs the prague build as compiled (only the immutables are filled in).
        deployed = bytes.fromhex(load_artifact("JobEscrow")["deployedBytecode"][2:])
        assert len(w3.eth.get_code(d.escrow.address)) == len(deployed)

        def send(fn, sender):
            receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender}), timeout=30)
            assert receipt["status"] == 1
            return receipt

        token, escrow = d.token.functions, d.escrow.functions
        send(token.mint(alice, 1_000 * USD), admin)
        send(token.approve(d.escrow.address, 1_000 * USD), alice)
        job = Web3.keccak(text="dev-node-job")
        deadline = w3.eth.get_block("latest")["timestamp"] + 3600
        funded = send(d.fund_call(job, alice, 100 * USD, deadline), alice)
        [event] = d.escrow.events.JobFunded().process_receipt(funded, errors=DISCARD)
        assert event["args"]["consumer"] == alice

        send(escrow.settle(settlement(job, [(carol, 70 * USD)], 5 * USD)), operator)
        assert escrow.escrows(job).call()[3] == SETTLED
        send(escrow.withdraw(), carol)
        send(escrow.withdrawFor(alice), operator)
        assert token.balanceOf(carol).call() == 70 * USD
        assert token.balanceOf(alice).call() == 925 * USD
        assert token.balanceOf(d.escrow.address).call() == 5 * USD  # the treasury's credit

        # A settled job cannot settle again: web3 raises the decoded custom error.
        with pytest.raises(ContractCustomError) as excinfo:
            escrow.settle(settlement(job, [(carol, 1)], 0)).transact({"from": operator})
        assert decode_error("JobEscrow", revert_data(excinfo.value)) == ("NotFunded", (bytes(job), SETTLED))

        # After its deadline the consumer takes an unsettled deposit back.
        late = Web3.keccak(text="dev-node-late-job")
        send(d.fund_call(late, alice, 50 * USD, w3.eth.get_block("latest")["timestamp"] + 60), alice)
        w3.provider.make_request("evm_increaseTime", [120])
        w3.provider.make_request("evm_mine", [])
        send(escrow.refund(late), alice)
        assert escrow.escrows(late).call()[3] == REFUNDED
        assert token.balanceOf(alice).call() == 925 * USD
