"""Admin for trust: disputes (slash or dismiss, through the staking service), consumers'
disputes (refund, slash or reject, through services/disputes.py) and stakes (view-only: the
stake indexer writes them)."""

from django.contrib import admin, messages
from django.db.models import QuerySet

from ..models import ConsumerDispute, Dispute, ProviderStake, StakeEvent
from ..services.disputes import consumer_dispute_refund, consumer_dispute_reject, consumer_dispute_slash
from ..services.staking import dispute_dismiss, dispute_slash_enqueue
from .common import ReadOnlyAdminMixin, ViewOnlyWithActionsMixin, act_on_each, money, tx_link


@admin.register(Dispute)
class DisputeAdmin(ViewOnlyWithActionsMixin, admin.ModelAdmin):
    list_display = ["id", "job", "provider", "reason", "attributed", "status", "slash_display", "created_at",
                    "resolved_at"]
    # Unattributed disputes (a replay mismatch across nodes, an error while verifying) wait
    # for staff: nothing slashes them (services/staking.dispute_slash).
    list_filter = ["status", "attributed", "reason"]
    search_fields = ["=job__id", "provider__name"]
    list_select_related = ["job", "provider"]
    raw_id_fields = ["job", "assignment", "verification"]
    fields = ["job", "assignment", "provider", "verification", "reason", "attributed", "detail", "status",
              "slash_display", "slash_link", "slash_note", "created_at", "resolved_at"]
    readonly_fields = fields
    show_full_result_count = False
    actions = ["slash", "dismiss"]

    @admin.display(description="slashed", ordering="slash_amount")
    def slash_display(self, obj: Dispute) -> str:
        return money(obj.slash_amount) if obj.slash_amount is not None else "—"

    @admin.display(description="slash transaction")
    def slash_link(self, obj: Dispute) -> str:
        return tx_link(obj.slash_tx)

    @admin.display(description="slash note")
    def slash_note(self, obj: Dispute) -> str:
        slash = getattr(obj, "slash", None)
        return slash.note if slash is not None else ""

    @admin.action(description="Slash the provider's stake (amount by policy; to the treasury; attributed "
                              "disputes only)",
                  permissions=["change"])
    def slash(self, request, queryset: QuerySet[Dispute]):
        queued = [d for d in queryset.order_by("pk") if d.status == Dispute.Status.OPEN]
        for dispute in queued:
            dispute_slash_enqueue(dispute=dispute)
        skipped = queryset.count() - len(queued)
        if queued:
            self.message_user(request, f"Slash queued for dispute{'s' if len(queued) > 1 else ''} "
                              + ", ".join(f"#{d.pk}" for d in queued) + "; each is marked slashed once the "
                              "chain confirms it.", messages.SUCCESS)
        if skipped:
            self.message_user(request, f"{skipped} dispute(s) are not open and were left alone.",
                              messages.WARNING)

    @admin.action(description="Dismiss (close without a slash)", permissions=["change"])
    def dismiss(self, request, queryset: QuerySet[Dispute]):
        def act(dispute: Dispute) -> str:
            dispute_dismiss(dispute=dispute, actor=request.user)
            return f"#{dispute.pk}"
        act_on_each(self, request, queryset.order_by("pk"), act, done="Dismissed {}.",
                    refused="Not dismissed: ", label=lambda d: f"#{d.pk}")


class StakeEventInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = StakeEvent
    fields = ["kind", "amount", "dispute", "recipient", "tx_hash", "block_number"]
    readonly_fields = fields
    extra = 0
    ordering = ["-block_number", "-log_index"]


@admin.register(ProviderStake)
class ProviderStakeAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["address", "organization", "staked", "pending", "unlock_at", "slashed_total",
                    "updated_at"]
    list_select_related = ["organization"]
    search_fields = ["=address", "organization__name"]
    inlines = [StakeEventInline]


@admin.register(ConsumerDispute)
class ConsumerDisputeAdmin(ViewOnlyWithActionsMixin, admin.ModelAdmin):
    """Consumers' disputes of finished jobs: staff refund, slash or reject them through
    services/disputes.py (each decision audited and on the job's timeline)."""

    list_display = ["id", "job", "organization", "status", "created_at", "opened_by", "resolved_at",
                    "resolved_by"]
    list_filter = ["status"]
    search_fields = ["=job__id", "organization__name", "reason"]
    list_select_related = ["job", "organization", "opened_by", "resolved_by"]
    raw_id_fields = ["job"]
    fields = ["job", "organization", "opened_by", "reason", "status", "resolution", "resolved_by",
              "refund_amount", "refund_link", "created_at", "resolved_at"]
    readonly_fields = fields
    show_full_result_count = False
    actions = ["refund", "slash", "reject"]

    @admin.display(description="refund transaction")
    def refund_link(self, obj: ConsumerDispute) -> str:
        return tx_link(obj.refund_tx)

    def _resolve(self, request, queryset, service, done_text: str):
        def act(dispute: ConsumerDispute) -> str:
            service(dispute=dispute, actor=request.user)
            return f"#{dispute.pk}"
        act_on_each(self, request, queryset.order_by("pk"), act, done=f"{done_text}: {{}}.",
                    refused="Not done: ", label=lambda d: f"#{d.pk}")

    @admin.action(description="Refund the consumer (the escrow, or what was charged)", permissions=["change"])
    def refund(self, request, queryset: QuerySet[ConsumerDispute]):
        self._resolve(request, queryset, consumer_dispute_refund, "Refunded")

    @admin.action(description="Uphold against the providers: slash their stake", permissions=["change"])
    def slash(self, request, queryset: QuerySet[ConsumerDispute]):
        self._resolve(request, queryset, consumer_dispute_slash, "Slash queued for")

    @admin.action(description="Reject (nothing is refunded or slashed)", permissions=["change"])
    def reject(self, request, queryset: QuerySet[ConsumerDispute]):
        self._resolve(request, queryset, consumer_dispute_reject, "Rejected")
