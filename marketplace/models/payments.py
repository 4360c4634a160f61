"""Payments: wallets, the escrow of each job, the platform's chain transactions and the
settlement statements. Written by `marketplace.services.payments` and the chain layer
(`marketplace.chain`); the chain itself is the source of truth for money, these rows are
what we sent and what the indexer has seen."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from .common import MONEY


class Wallet(models.Model):
    """An address an organization pays from or is paid to."""

    class Kind(models.TextChoices):
        CUSTODIAL = "custodial", "Custodial (development only; the platform holds the key)"
        EXTERNAL = "external", "Linked by Sign-In with Ethereum (the user holds the key)"

    organization = models.ForeignKey("marketplace.Organization", on_delete=models.CASCADE,
                                     related_name="wallets")
    address = models.CharField(max_length=42, unique=True, help_text="Checksummed 0x address.")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # Fernet token of the private key (custodial development wallets only).
    encrypted_key = models.TextField(blank=True)
    linked_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                  blank=True, related_name="+")
    is_payout = models.BooleanField(default=False, help_text="Where the organization is paid.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization_id", "created_at"]
        constraints = [
            models.UniqueConstraint(fields=["organization"], condition=Q(is_payout=True),
                                    name="one_payout_wallet_per_org"),
            models.CheckConstraint(condition=Q(kind="external", encrypted_key="") | Q(kind="custodial"),
                                   name="external_wallet_has_no_key"),
        ]

    def __str__(self) -> str:
        return f"{self.address} ({self.get_kind_display().split(' (')[0].lower()})"


class PayoutChange(models.Model):
    """An organization admin's request to be paid to another wallet. It takes effect
    PAYOUT_CHANGE_DELAY_S after it was asked for (announced on the provider's pages
    meanwhile), so that a stolen session or a rogue member cannot redirect the payouts of
    work already done before anyone notices; settlements until then pay the old wallet."""

    organization = models.ForeignKey("marketplace.Organization", on_delete=models.CASCADE,
                                     related_name="payout_changes")
    wallet = models.ForeignKey(Wallet, on_delete=models.CASCADE, related_name="payout_changes")
    previous = models.ForeignKey(Wallet, on_delete=models.SET_NULL, null=True, blank=True,
                                 related_name="+", help_text="The payout wallet when it was asked for.")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                     blank=True, related_name="+")
    requested_at = models.DateTimeField(auto_now_add=True)
    effective_at = models.DateTimeField()
    applied_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            # One pending change per organization: a new request replaces (cancels) it.
            models.UniqueConstraint(fields=["organization"],
                                    condition=Q(applied_at__isnull=True, cancelled_at__isnull=True),
                                    name="one_pending_payout_change"),
        ]

    def __str__(self) -> str:
        return f"payout of {self.organization_id} to {self.wallet_id} from {self.effective_at}"


class SiweNonce(models.Model):
    """A Sign-In with Ethereum nonce: issued to one user, valid once, for a few minutes."""

    nonce = models.CharField(max_length=32, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.nonce


class ChainContract(models.Model):
    """A deployed contract, per chain: `chain_deploy` records it, everything else reads it."""

    chain_id = models.PositiveBigIntegerField()
    name = models.CharField(max_length=32)
    address = models.CharField(max_length=42)
    block_number = models.PositiveBigIntegerField(default=0)
    # Which chain this is, beyond its id: a development chain that starts afresh (or a node
    # pointed elsewhere) keeps the id. `deploy.chain_identity_check` compares these.
    genesis_hash = models.CharField(max_length=66, blank=True)
    block_hash = models.CharField(max_length=66, blank=True, help_text="The deployment block's hash.")
    code_hash = models.CharField(max_length=66, blank=True, help_text="keccak of the deployed code.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain_id", "name"], name="one_contract_per_chain")]

    def __str__(self) -> str:
        return f"{self.name} on chain {self.chain_id} at {self.address}"


class ChainAccount(models.Model):
    """A sending account of the platform (the operator): nonces are handed out here, under a
    row lock, so any number of workers can send without colliding."""

    chain_id = models.PositiveBigIntegerField()
    address = models.CharField(max_length=42)
    next_nonce = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain_id", "address"], name="one_account_per_chain")]

    def __str__(self) -> str:
        return f"{self.address} (next nonce {self.next_nonce})"


class ChainTransaction(models.Model):
    """A transaction the platform signed. Stored (raw bytes and hash) before it is broadcast,
    so a crash after signing re-sends the very same transaction instead of a second one."""

    class Status(models.TextChoices):
        SIGNED = "signed", "Signed, not yet broadcast"
        SENT = "sent", "Broadcast, waiting to be mined"
        MINED = "mined", "Mined, waiting for confirmations"
        CONFIRMED = "confirmed", "Confirmed"
        REVERTED = "reverted", "Reverted"

    class Purpose(models.TextChoices):
        DEPLOY = "deploy", "Deploy a contract"
        MINT = "mint", "Mint test tokens"
        GAS = "gas", "Send gas money"
        APPROVE = "approve", "Approve the escrow"
        FUND = "fund", "Fund a job"
        TOP_UP = "top_up", "Top up a job's escrow"
        SETTLE = "settle", "Settle jobs"
        REFUND = "refund", "Refund a job"
        WITHDRAW = "withdraw", "Pay out credited funds"
        STAKE = "stake", "Stake, or withdraw stake"
        SLASH = "slash", "Slash a provider's stake"

    chain_id = models.PositiveBigIntegerField()
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    sender = models.CharField(max_length=42)
    to = models.CharField(max_length=42, blank=True)
    nonce = models.PositiveBigIntegerField()
    raw = models.TextField(help_text="The signed transaction, hex.")
    tx_hash = models.CharField(max_length=66, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SIGNED)
    block_number = models.PositiveBigIntegerField(null=True, blank=True)
    gas_used = models.PositiveBigIntegerField(null=True, blank=True)
    broadcasts = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True)
    # Set when the chain it was sent on is gone (reset, or not the node it was sent to): the
    # row stays, so its page can say what was sent where, and frees its nonce and hash for
    # the new chain (the same signed bytes can recur there: development keys are fixed).
    lost_reason = models.CharField(max_length=300, blank=True)
    lost_genesis = models.CharField(max_length=66, blank=True, help_text="The lost chain's genesis hash.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["chain_id", "sender", "nonce"], condition=Q(lost_reason=""),
                                    name="one_tx_per_nonce"),
            models.UniqueConstraint(fields=["tx_hash"], condition=Q(lost_reason=""),
                                    name="one_live_tx_per_hash"),
        ]
        indexes = [models.Index(fields=["status", "id"], name="chaintx_status")]

    def __str__(self) -> str:
        return f"{self.get_purpose_display()} {self.tx_hash[:12]}… ({self.status})"


class Escrow(models.Model):
    """A job's escrow on the chain, as the indexer has seen it."""

    class Status(models.TextChoices):
        UNFUNDED = "unfunded", "Not funded yet"
        FUNDING = "funding", "Funding transaction sent"
        FUNDED = "funded", "Funded"
        SETTLED = "settled", "Settled"
        REFUNDED = "refunded", "Refunded"
        CHAIN_LOST = "chain_lost", "Chain lost (staff to resolve)"

    job = models.OneToOneField("marketplace.Job", on_delete=models.CASCADE, related_name="escrow")
    key = models.CharField(max_length=66, unique=True, help_text="The job id on the chain (bytes32, hex).")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UNFUNDED)
    amount = models.DecimalField(**MONEY, default=0, help_text="Deposited, as the chain says.")
    consumer_address = models.CharField(max_length=42, blank=True)
    deadline = models.DateTimeField(null=True, blank=True)
    fund_tx = models.CharField(max_length=66, blank=True)
    close_tx = models.CharField(max_length=66, blank=True, help_text="Settlement or refund.")
    # The custodial top-up in flight (services/payments.py job_fund): a retry sends no second one.
    top_up_tx = models.CharField(max_length=66, blank=True)
    top_up_total = models.DecimalField(**MONEY, null=True, blank=True,
                                       help_text="The deposit once the top-up is mined.")
    funded_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    lost_reason = models.CharField(max_length=300, blank=True,
                                   help_text="Why the chain that held this deposit is gone.")

    def __str__(self) -> str:
        return f"escrow of job {self.job_id}: {self.status}"


class Settlement(models.Model):
    """What a finished job costs, per provider: computed once, paid in one batch."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for the next batch"
        SUBMITTED = "submitted", "In a batch transaction"
        SETTLED = "settled", "Settled on chain"
        SKIPPED = "skipped", "Skipped by the contract (see the job's timeline)"

    job = models.OneToOneField("marketplace.Job", on_delete=models.CASCADE, related_name="settlement")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    charged = models.DecimalField(**MONEY, help_text="Work at the locked prices, capped by the escrow.")
    fee = models.DecimalField(**MONEY)
    refunded = models.DecimalField(**MONEY)
    statement = models.JSONField(default=list, help_text="One line per assignment.")
    transaction = models.ForeignKey(ChainTransaction, on_delete=models.PROTECT, null=True, blank=True,
                                    related_name="settlements")
    # The contract's SettlementSkipped: the escrow's state on chain then (0 none, 1 funded,
    # 2 settled, 3 refunded).
    skipped_state = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "id"], name="settlement_status")]

    def __str__(self) -> str:
        return f"settlement of job {self.job_id}: {self.status}"


class Payout(models.Model):
    """A provider's share of one settlement (after the platform fee)."""

    settlement = models.ForeignKey(Settlement, on_delete=models.CASCADE, related_name="payouts")
    provider = models.ForeignKey("marketplace.Organization", on_delete=models.PROTECT, related_name="payouts")
    address = models.CharField(max_length=42)
    amount = models.DecimalField(**MONEY)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["settlement", "provider"],
                                               name="one_payout_per_provider")]

    def __str__(self) -> str:
        return f"{self.amount} tUSD to {self.provider_id}"


class ChainCursor(models.Model):
    """How far the event indexer has read, per chain and contract."""

    chain_id = models.PositiveBigIntegerField()
    address = models.CharField(max_length=42)
    last_block = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain_id", "address"],
                                               name="one_cursor_per_contract")]

    def __str__(self) -> str:
        return f"{self.address} read to block {self.last_block}"


class FaucetGrant(models.Model):
    """Test tUSD minted to an organization's custodial wallet by the faucet (development
    chains only; services/faucet.py). One row per mint: the Account page lists them, and
    the last one's time is what the faucet's rate limit counts from."""

    organization = models.ForeignKey("marketplace.Organization", on_delete=models.CASCADE,
                                      related_name="faucet_grants")
    wallet = models.ForeignKey(Wallet, on_delete=models.CASCADE, related_name="faucet_grants")
    amount = models.DecimalField(**MONEY)
    transaction = models.ForeignKey(ChainTransaction, on_delete=models.PROTECT, null=True, blank=True,
                                    related_name="faucet_grants")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True,
                                     blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "-created_at"], name="faucet_org_recent")]

    def __str__(self) -> str:
        return f"{self.amount} tUSD to {self.organization_id}"
