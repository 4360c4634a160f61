"""Random sequences of every ProviderStake operation against a plain-Python model (Hypothesis
stateful testing). After every step: each provider's staked, pending and unlock time are what
the model says, the contract holds exactly the sum of all stakes, every slash went to its
recipient once per dispute id, and nobody took out more than was put in."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from .conftest import DAY, Chain
from .stake_support import PROVIDER_MINT, dispute, prepare
from .support import TX_GAS, WITHDRAW_DELAY, load_artifact

EXAMPLES = int(os.environ.get("STAKE_EXAMPLES", "10"))
DISPUTES = 4


@dataclass(frozen=True)
class Stake:
    staked: int = 0
    pending: int = 0
    unlock: int = 0


amount = st.integers(0, 500)


class StakeModel(RuleBasedStateMachine):
    chain: Chain
    contract: object
    snapshot: int
    seen: set  # which kinds of step succeeded at least once, over all runs

    def __init__(self) -> None:
        super().__init__()
        c = self.chain
        c.tester.revert_to_snapshot(self.snapshot)
        c.tester.time_travel(c.now() + 30 * DAY)
        self.providers = [c.carol, c.dave]
        self.recipients = [c.alice, c.treasury]
        self.stakes = {p: Stake() for p in self.providers}
        self.slashed = [0] * DISPUTES
        self.received = dict.fromkeys(self.recipients, 0)
        self.start = {a: c.balance(a) for a in self.providers + self.recipients}
        self.paused = False

    def send(self, fn, sender: str, expect_ok: bool, kind: str) -> dict:
        receipt = self.chain.w3.eth.get_transaction_receipt(fn.transact({"from": sender, "gas": TX_GAS}))
        outcome = "succeeded" if receipt["status"] == 1 else "reverted"
        assert (receipt["status"] == 1) == expect_ok, f"{fn.fn_name} {outcome} against the model"
        if expect_ok:
            self.seen.add(kind)
        return receipt

    def block_time(self, receipt: dict) -> int:
        return self.chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]

    @rule(p=st.integers(0, 1), value=amount)
    def stake(self, p, value):
        who = self.providers[p]
        ok = not self.paused and value > 0
        self.send(self.contract.functions.stake(value), who, ok, "stake")
        if ok:
            self.stakes[who] = replace(self.stakes[who], staked=self.stakes[who].staked + value)

    @rule(p=st.integers(0, 1), value=amount)
    def request_withdrawal(self, p, value):
        who, s = self.providers[p], self.stakes[self.providers[p]]
        ok = not self.paused and 0 < value <= s.staked
        receipt = self.send(self.contract.functions.requestWithdrawal(value), who, ok, "request")
        if ok:
            self.stakes[who] = Stake(staked=s.staked - value, pending=s.pending + value,
                                     unlock=self.block_time(receipt) + WITHDRAW_DELAY)

    @rule(p=st.integers(0, 1))
    def withdraw(self, p):
        who, s = self.providers[p], self.stakes[self.providers[p]]
        ok = s.pending > 0 and self.chain.now() >= s.unlock  # works while paused
        self.send(self.contract.functions.withdraw(), who, ok, "withdraw")
        if ok:
            self.stakes[who] = Stake(staked=s.staked)

    @rule(p=st.integers(0, 1), value=st.integers(0, 1_200), d=st.integers(0, DISPUTES - 1),
          r=st.integers(0, 1))
    def slash(self, p, value, d, r):
        who, s, to = self.providers[p], self.stakes[self.providers[p]], self.recipients[r]
        ok = not self.paused and value > 0 and self.slashed[d] == 0 and s.staked + s.pending > 0
        fn = self.contract.functions.slash(who, value, 1, dispute(d), to)
        self.send(fn, self.chain.operator, ok, "slash")
        if ok:
            from_staked = min(value, s.staked)
            from_pending = min(value - from_staked, s.pending)
            self.stakes[who] = replace(s, staked=s.staked - from_staked, pending=s.pending - from_pending)
            self.slashed[d] = from_staked + from_pending
            self.received[to] += from_staked + from_pending

    @rule(seconds=st.integers(1, 10 * DAY))
    def travel(self, seconds):
        self.chain.tester.time_travel(self.chain.now() + seconds)

    @rule()
    def toggle_pause(self):
        fn = self.contract.functions
        self.send(fn.unpause() if self.paused else fn.pause(), self.chain.admin, True, "pause")
        self.paused = not self.paused

    def slot(self, variable: str, key: bytes | str, state) -> int:
        """A mapping entry of ProviderStake read straight from the chain's state (an eth_call
        per value would make this test ten times slower)."""
        c = self.chain
        base = next(v["slot"] for v in load_artifact("ProviderStake")["storage"] if v["label"] == variable)
        word = bytes.fromhex(key.removeprefix("0x")) if isinstance(key, str) else bytes(key)
        at = int.from_bytes(c.w3.keccak(word.rjust(32, b"\0") + base.to_bytes(32, "big")), "big")
        return state.get_storage(bytes.fromhex(self.contract.address[2:]), at)

    @invariant()
    def stakes_slashes_and_balances_match_the_model(self):
        c = self.chain
        evm = c.state()
        for who, s in self.stakes.items():
            word = self.slot("_stakes", who, evm)  # staked | pending << 96 | unlockAt << 192
            assert (word & (2**96 - 1), (word >> 96) & (2**96 - 1), word >> 192) == (
                s.staked, s.pending, s.unlock)
        balance = {a: c.storage(c.token, "_balances", a, state=evm)
                   for a in [self.contract.address, *self.providers, *self.recipients]}
        held = sum(s.staked + s.pending for s in self.stakes.values())
        assert balance[self.contract.address] == held
        assert [self.slot("slashedFor", dispute(d), evm) for d in range(DISPUTES)] == self.slashed
        for to in self.recipients:
            assert balance[to] == self.start[to] + self.received[to]
        # Nobody took out more than was put in: every token is with a provider, at stake or
        # with a slash's recipient.
        assert sum(self.start[p] for p in self.providers) == (
            sum(balance[p] for p in self.providers) + held + sum(self.received.values()))

    def teardown(self):
        """The storage reads agree with the contract's own getters."""
        f = self.contract.functions
        for who, s in self.stakes.items():
            assert tuple(f.stakes(who).call()) == (s.staked, s.pending, s.unlock)
        assert [f.slashedFor(dispute(d)).call() for d in range(DISPUTES)] == self.slashed


def test_random_operation_sequences_keep_the_stake_solvent(_deployed):
    chain, snapshot = _deployed
    contract, staked_snapshot = prepare(chain, snapshot)
    seen: set[str] = set()
    machine = type("BoundStakeModel", (StakeModel,), {"chain": chain, "contract": contract,
                                                      "snapshot": staked_snapshot, "seen": seen})
    # A fixed sequence first, so that every kind of step is checked whatever the random runs do.
    m = machine()
    for step in (lambda: m.stake(0, 300), lambda: m.request_withdrawal(0, 100), lambda: m.withdraw(0),
                 lambda: m.slash(0, 250, 0, 0), lambda: m.slash(0, 10, 0, 1), lambda: m.travel(8 * DAY),
                 lambda: m.withdraw(0), lambda: m.toggle_pause(), lambda: m.stake(1, 5)):
        step()
        m.stakes_slashes_and_balances_match_the_model()
    m.teardown()
    assert seen == {"stake", "request", "withdraw", "slash", "pause"}
    assert chain.balance(chain.carol) == PROVIDER_MINT - 250  # 300 in, 250 slashed, 50 back
    run_state_machine_as_test(machine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=20, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow]))
