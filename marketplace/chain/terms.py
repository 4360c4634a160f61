"""The funding terms an operator signs and `JobEscrow.fund` checks (EIP-712 `FundTerms`).

The escrow binds a job id to one consumer, amount and deadline: `fund` recovers the signer
of FundTerms(jobId, msg.sender, amount, deadline) and accepts it only when the signer holds
OPERATOR_ROLE. The platform signs the job's own terms (its budget, its reclaim deadline)
for the owner's wallet when it hands out fund calls, so neither a stranger who copies the
transaction (front-running) nor the consumer with a deadline of its own choosing can fund.

Pure eth-account: no Django, so the contract tests and bench/gas.py sign with it too.
"""

from eth_account import Account
from eth_account.messages import encode_typed_data

DOMAIN_NAME = "ComputeMesh JobEscrow"  # JobEscrow's EIP712 constructor arguments
DOMAIN_VERSION = "1"
FUND_TERMS_TYPES = {
    "FundTerms": [
        {"name": "jobId", "type": "bytes32"},
        {"name": "consumer", "type": "address"},
        {"name": "amount", "type": "uint96"},
        {"name": "deadline", "type": "uint64"},
    ],
}


def fund_terms_message(*, chain_id: int, escrow: str, job_id: bytes, consumer: str, amount: int,
                       deadline: int) -> dict:
    """The typed data (eth_signTypedData_v4 shape) of one funding's terms."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            **FUND_TERMS_TYPES,
        },
        "primaryType": "FundTerms",
        "domain": {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": chain_id,
                   "verifyingContract": escrow},
        "message": {"jobId": bytes(job_id), "consumer": consumer, "amount": int(amount),
                    "deadline": int(deadline)},
    }


def sign_fund_terms(*, key: str, chain_id: int, escrow: str, job_id: bytes, consumer: str, amount: int,
                    deadline: int) -> bytes:
    """The operator's 65-byte signature (r, s, v) of the terms, as `fund` takes it. ECDSA
    signing here is deterministic (RFC 6979): asking twice gives the same bytes."""
    message = fund_terms_message(chain_id=chain_id, escrow=escrow, job_id=job_id, consumer=consumer,
                                 amount=amount, deadline=deadline)
    return bytes(Account.sign_message(encode_typed_data(full_message=message), key).signature)
