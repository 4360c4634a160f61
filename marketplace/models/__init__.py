"""The marketplace's domain model.

Writes go through `marketplace.services`; a job's status changes only through
`marketplace.job_states`. Money is Decimal with 6 places in the settlement token (tUSD).

One module per domain area; everything is exported here, where Django and the rest of
the code find the models (`from marketplace.models import Job`)."""

from .accounts import AuditEvent, IdempotencyKey, Membership, Organization  # noqa: F401
from .common import MONEY  # noqa: F401
from .datasets import CodeBundle, Dataset, Upload  # noqa: F401
from .determinism import DeterminismCheck  # noqa: F401
from .jobs import Assignment, Checkpoint, Job, JobEvent, LogLine, MetricPoint  # noqa: F401
from .market import SEARCH_COLUMNS, Node, NodeRegistrationCode, Offer, PostgresOnlyIndex  # noqa: F401
from .payments import (  # noqa: F401
    ChainAccount,
    ChainContract,
    ChainCursor,
    ChainTransaction,
    Escrow,
    FaucetGrant,
    Payout,
    PayoutChange,
    Settlement,
    SiweNonce,
    Wallet,
)
from .trust import (  # noqa: F401
    ComplianceEvidence,
    ConsumerDispute,
    Dispute,
    DisputeSlash,
    GradientCommitment,
    NodeUptime,
    ProviderStake,
    StakeEvent,
    StakeOperation,
    VerificationReport,
)
