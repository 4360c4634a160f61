"""Admin for payments: wallets, payout changes, escrows, settlements and the platform's
chain transactions. All of it is written by the payment services and the chain indexer (the
chain is the source of truth): read-only here, except the refunds, which are actions that
call their services."""

from django.contrib import admin
from django.db.models import QuerySet

from ..models import (
    ChainAccount,
    ChainContract,
    ChainCursor,
    ChainTransaction,
    Escrow,
    Payout,
    PayoutChange,
    Settlement,
    Wallet,
)
from ..services.payments import escrow_force_refund, escrow_lost_refund
from .common import EMPTY, ReadOnlyAdminMixin, ViewOnlyWithActionsMixin, act_on_each, money, tx_link


@admin.register(Wallet)
class WalletAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    # `encrypted_key` is never listed, shown or searchable: custodial keys stay in the database.
    list_display = ["address", "organization", "kind", "is_payout", "linked_by", "created_at"]
    list_filter = ["kind", "is_payout"]
    search_fields = ["=address", "organization__name"]
    list_select_related = ["organization", "linked_by"]
    fields = ["address", "organization", "kind", "is_payout", "linked_by", "created_at"]
    ordering = ["-id"]


@admin.register(PayoutChange)
class PayoutChangeAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Payout wallet changes asked for by providers' admins (services/wallets.py): staff see
    who asked, from which wallet to which, and when it took effect or was cancelled."""

    list_display = ["organization", "wallet", "previous", "requested_by", "requested_at", "effective_at",
                    "applied_at", "cancelled_at"]
    list_filter = [("applied_at", admin.EmptyFieldListFilter), ("cancelled_at", admin.EmptyFieldListFilter)]
    search_fields = ["organization__name", "=wallet__address"]
    list_select_related = ["organization", "wallet", "previous", "requested_by"]
    ordering = ["-id"]


class LostChainFilter(admin.SimpleListFilter):
    title = "chain"
    parameter_name = "chain"

    def lookups(self, request, model_admin):
        return [("current", "Sent on the current chain"), ("lost", "Sent on a chain that is gone")]

    def queryset(self, request, queryset):
        if self.value() == "current":
            return queryset.filter(lost_reason="")
        if self.value() == "lost":
            return queryset.exclude(lost_reason="")
        return queryset


@admin.register(ChainTransaction)
class ChainTransactionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "purpose", "status", "nonce", "short_hash", "block_number", "gas_used",
                    "error", "created_at"]
    list_filter = ["status", "purpose", LostChainFilter]
    search_fields = ["=tx_hash", "=sender"]
    fields = ["purpose", "status", "chain_id", "sender", "to", "nonce", "tx_hash", "block_number",
              "gas_used", "broadcasts", "error", "lost_reason", "lost_genesis", "created_at", "updated_at"]
    ordering = ["-id"]
    show_full_result_count = False

    @admin.display(description="hash", ordering="tx_hash")
    def short_hash(self, obj: ChainTransaction) -> str:
        return tx_link(obj.tx_hash)


@admin.register(Escrow)
class EscrowAdmin(ViewOnlyWithActionsMixin, admin.ModelAdmin):
    list_display = ["job", "status", "amount_display", "consumer_address", "funded_at", "closed_at",
                    "lost_reason"]
    list_filter = ["status"]  # "Chain lost (staff to resolve)" lists what waits for the lost-refund action
    search_fields = ["=job__id", "=key", "=consumer_address"]
    list_select_related = ["job"]
    raw_id_fields = ["job"]
    fields = ["job", "key", "status", "lost_reason", "amount_display", "consumer_address", "deadline",
              "fund_link", "close_link", "funded_at", "closed_at"]
    readonly_fields = fields
    ordering = ["-id"]
    show_full_result_count = False
    actions = ["force_refund", "lost_refund"]

    @admin.display(description="amount", ordering="amount")
    def amount_display(self, obj: Escrow) -> str:
        return money(obj.amount)

    @admin.display(description="funding transaction")
    def fund_link(self, obj: Escrow) -> str:
        return tx_link(obj.fund_tx)

    @admin.display(description="settlement or refund transaction")
    def close_link(self, obj: Escrow) -> str:
        return tx_link(obj.close_tx)

    @admin.action(description="Force refund (return the deposit to the consumer on chain)",
                  permissions=["change"])
    def force_refund(self, request, queryset: QuerySet[Escrow]):
        act_on_each(self, request, queryset.select_related("job").order_by("pk"),
                    lambda e: f"job {e.job_id} ({escrow_force_refund(job=e.job, actor=request.user)})",
                    done="Refund sent for {}. The job follows once the chain confirms it.", done_sep="; ",
                    refused="Not refunded: ", label=lambda e: f"job {e.job_id}")

    @admin.action(description="Refund a lost escrow (its chain is gone: mint the deposit to the consumer "
                              "on the development chain)", permissions=["change"])
    def lost_refund(self, request, queryset: QuerySet[Escrow]):
        act_on_each(self, request, queryset.select_related("job").order_by("pk"),
                    lambda e: f"job {e.job_id} ({escrow_lost_refund(job=e.job, actor=request.user)})",
                    done="Refunded {}.", done_sep="; ", refused="Not refunded: ",
                    label=lambda e: f"job {e.job_id}")


class PayoutInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Payout
    extra = 0
    can_delete = False
    fields = ["provider", "address", "amount_display"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("provider")

    @admin.display(description="amount (after the platform fee)")
    def amount_display(self, obj: Payout) -> str:
        return money(obj.amount)


@admin.register(Settlement)
class SettlementAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["job", "status", "charged_display", "fee_display", "refunded_display", "tx",
                    "created_at", "settled_at"]
    list_filter = ["status"]
    search_fields = ["=job__id"]
    list_select_related = ["job__escrow", "transaction"]
    fields = ["job", "status", "skipped_state", "charged_display", "fee_display", "refunded_display", "tx",
              "statement", "created_at", "settled_at"]
    readonly_fields = fields
    inlines = [PayoutInline]
    ordering = ["-id"]
    show_full_result_count = False

    @admin.display(description="charged", ordering="charged")
    def charged_display(self, obj: Settlement) -> str:
        return money(obj.charged)

    @admin.display(description="platform fee", ordering="fee")
    def fee_display(self, obj: Settlement) -> str:
        return money(obj.fee)

    @admin.display(description="back to the consumer", ordering="refunded")
    def refunded_display(self, obj: Settlement) -> str:
        return money(obj.refunded)

    @admin.display(description="transaction")
    def tx(self, obj: Settlement) -> str:
        if obj.transaction_id:
            return tx_link(obj.transaction.tx_hash)
        # Settled by a transaction that was not our batch (e.g. a withdrawal after the
        # deadline): the escrow's closing transaction is the one that paid.
        escrow = getattr(obj.job, "escrow", None)
        if obj.status == Settlement.Status.SETTLED and escrow is not None:
            return tx_link(escrow.close_tx)
        return EMPTY


@admin.register(ChainContract)
class ChainContractAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["name", "chain_id", "address", "block_number", "created_at"]
    list_filter = ["name"]
    ordering = ["chain_id", "name"]


@admin.register(ChainAccount)
class ChainAccountAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["address", "chain_id", "next_nonce"]
    ordering = ["chain_id", "address"]


@admin.register(ChainCursor)
class ChainCursorAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["address", "chain_id", "last_block"]
    ordering = ["chain_id", "address"]
