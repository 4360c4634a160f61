"""The escrow binds (job id, consumer, amount, deadline): `fund` takes only terms an operator
signed (EIP-712 FundTerms) for the caller, and only that consumer tops up or refunds.

Each attack below succeeded against the escrow before the terms were bound (issue 12, items 1
and 2): a consumer funded with a deadline 60 s away, was served, and refunded everything; a
stranger who saw a consumer's pending `fund` took the job id first with 1 unit, and the
platform told the owner to top that escrow up, whose refund went to the stranger."""

from .conftest import DAY, MINTED, job
from .support import FUNDED, NONE, REFUNDED, USD, account_key, deploy_escrow


def test_a_consumer_cannot_fund_with_a_deadline_of_its_own(chain):
    signed_deadline = chain.now() + DAY  # what the platform signed: the job's reclaim deadline
    signature = chain.terms(job(1), chain.alice, 100 * USD, signed_deadline)
    short = chain.now() + 60
    chain.reverts(chain.fund_call(job(1), chain.alice, 100 * USD, short, signature=signature),
                  chain.alice, "TermsNotSigned")
    # Terms the consumer signs itself are not an operator's.
    own = chain.terms(job(1), chain.alice, 100 * USD, short, key=account_key(chain.w3, chain.alice))
    chain.reverts(chain.fund_call(job(1), chain.alice, 100 * USD, short, signature=own),
                  chain.alice, "TermsNotSigned", job(1), chain.alice)
    assert chain.escrow_of(job(1))[3] == NONE
    # Nor fund less than the signed amount (the platform starts a job the deposit covers).
    chain.reverts(chain.fund_call(job(1), chain.alice, USD, signed_deadline, signature=signature),
                  chain.alice, "TermsNotSigned")

    chain.send(chain.fund_call(job(1), chain.alice, 100 * USD, signed_deadline, signature=signature),
               chain.alice)
    assert chain.escrow_of(job(1)) == (chain.alice, 100 * USD, signed_deadline, FUNDED)
    # The self-funded consumer cannot take the deposit back before the signed deadline.
    chain.travel_to(short + 1)
    chain.reverts(chain.escrow.functions.refund(job(1)), chain.alice, "DeadlineNotReached", job(1),
                  signed_deadline)


def test_a_front_runner_cannot_take_the_job_id_or_the_owners_money(chain):
    deadline = chain.now() + DAY
    owners_fund = chain.fund_call(job(1), chain.alice, 100 * USD, deadline)  # seen in the mempool
    chain.send(chain.token.functions.mint(chain.mallory, 10 * USD), chain.admin)
    chain.send(chain.token.functions.approve(chain.escrow.address, 10 * USD), chain.mallory)

    # The stranger replays the owner's call (same terms, same signature) from its own address,
    # then tries 1 unit with that signature, and with terms it signed itself.
    chain.reverts(owners_fund, chain.mallory, "TermsNotSigned")
    signature = chain.terms(job(1), chain.alice, 100 * USD, deadline)
    chain.reverts(chain.fund_call(job(1), chain.mallory, 1, deadline, signature=signature),
                  chain.mallory, "TermsNotSigned")
    own = chain.terms(job(1), chain.mallory, 1, chain.now() + 60, key=account_key(chain.w3, chain.mallory))
    chain.reverts(chain.fund_call(job(1), chain.mallory, 1, chain.now() + 60, signature=own),
                  chain.mallory, "TermsNotSigned", job(1), chain.mallory)
    # Operator-signed terms for the stranger's own job do not open the owner's job id.
    theirs = chain.terms(job(2), chain.mallory, 1, deadline)
    chain.reverts(chain.fund_call(job(1), chain.mallory, 1, deadline, signature=theirs),
                  chain.mallory, "TermsNotSigned")
    assert chain.escrow_of(job(1))[3] == NONE

    # The owner's funding goes through; the stranger can neither top it up nor refund it.
    chain.send(owners_fund, chain.alice)
    assert chain.escrow_of(job(1)) == (chain.alice, 100 * USD, deadline, FUNDED)
    top_up = chain.escrow.functions.topUp(job(1), 1)
    chain.reverts(top_up, chain.mallory, "NotConsumer", job(1), chain.mallory)
    chain.travel_to(deadline)
    chain.reverts(chain.escrow.functions.refund(job(1)), chain.mallory, "NotConsumer", job(1), chain.mallory)
    chain.send(chain.escrow.functions.refund(job(1)), chain.alice)
    assert chain.escrow_of(job(1))[3] == REFUNDED
    assert chain.balance(chain.alice) == MINTED
    assert chain.balance(chain.mallory) == 10 * USD


def test_the_operator_key_rotates_with_its_role(chain):
    """The admin grants OPERATOR_ROLE to a new key and revokes the old one: terms the old key
    signs stop opening job ids at once, the new key's work."""
    role = chain.escrow.functions.OPERATOR_ROLE().call()
    new = chain.dave
    chain.send(chain.escrow.functions.grantRole(role, new), chain.admin)
    chain.send(chain.escrow.functions.revokeRole(role, chain.operator), chain.admin)
    deadline = chain.now() + DAY
    old_signature = chain.terms(job(1), chain.alice, USD, deadline)
    chain.reverts(chain.fund_call(job(1), chain.alice, USD, deadline, signature=old_signature),
                  chain.alice, "TermsNotSigned", job(1), chain.operator)
    new_signature = chain.terms(job(1), chain.alice, USD, deadline, key=account_key(chain.w3, new))
    chain.send(chain.fund_call(job(1), chain.alice, USD, deadline, signature=new_signature), chain.alice)
    assert chain.escrow_of(job(1))[3] == FUNDED


def test_a_malformed_signature_reverts(chain):
    deadline = chain.now() + DAY
    signature = chain.terms(job(1), chain.alice, USD, deadline)
    for bad in (b"", signature[:64], signature + b"\0"):
        chain.reverts(chain.fund_call(job(1), chain.alice, USD, deadline, signature=bad), chain.alice,
                      "ECDSAInvalidSignatureLength", len(bad))
    assert chain.escrow_of(job(1))[3] == NONE


def test_admin_pauser_and_operator_may_be_three_keys(chain):
    w3 = chain.w3
    admin, pauser = w3.eth.accounts[8:10]
    operator, treasury = chain.operator, chain.treasury
    d = deploy_escrow(w3, admin=admin, operator=operator, treasury=treasury, pauser=pauser)
    e = d.escrow.functions
    names = ("DEFAULT_ADMIN_ROLE", "PAUSER_ROLE", "OPERATOR_ROLE")
    roles = {name: getattr(e, name)().call() for name in names}
    holders = {name: [a for a in (admin, pauser, operator) if e.hasRole(role, a).call()]
               for name, role in roles.items()}
    assert holders == {"DEFAULT_ADMIN_ROLE": [admin], "PAUSER_ROLE": [pauser], "OPERATOR_ROLE": [operator]}
    chain.send(e.pause(), pauser)
    assert e.paused().call()
