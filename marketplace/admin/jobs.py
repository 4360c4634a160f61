"""Admin for datasets, jobs and their timelines: a job's status is never editable (only
`marketplace.job_states` writes it); cancelling is an action that calls the job service."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.urls import reverse

from .. import catalogue
from ..errors import MarketError
from ..models import Dataset, Job, JobEvent
from ..services.datasets import dataset_delete
from ..services.jobs import job_cancel
from .common import (
    ReadOnlyAdminMixin,
    ViewOnlyWithActionsMixin,
    act_on_each,
    fixed_choices_filter,
    money,
    price,
)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "rows", "column_count", "size", "short_sha256",
                    "created_by", "created_at"]
    search_fields = ["name", "owner__name", "=sha256"]
    list_filter = ["owner__sector"]
    list_select_related = ["owner", "created_by"]
    ordering = ["-id"]
    # Uploads are validated by the dataset service (API and forms); here they are looked
    # at, renamed or removed, removal through the service (it refuses while a job that has not
    # finished uses the dataset, deletes the stored file and writes the audit trail).
    readonly_fields = ["owner", "created_by", "file", "size", "rows", "columns", "sha256",
                       "created_at"]
    fields = ["name", *readonly_fields]
    actions = ["delete_datasets"]

    def has_add_permission(self, request):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # replaced by delete_datasets, which can refuse
        return actions

    def get_deleted_objects(self, objs, request):
        # The service decides what goes (the dataset and its file; finished jobs only lose the
        # link, unfinished ones refuse the deletion), not the jobs' PROTECT.
        objs = list(objs)
        return [str(o) for o in objs], {Dataset._meta.verbose_name_plural: len(objs)}, set(), []

    def log_deletions(self, request, queryset):
        pass  # the service's audit event records a deletion, and only one that happened

    def delete_model(self, request, obj):
        try:
            dataset_delete(dataset=obj, actor=request.user)
        except MarketError as exc:
            self.message_user(request, f"Not deleted: {exc.message}", messages.ERROR)
            request.dataset_kept = True  # type: ignore[attr-defined]  (read by response_delete)

    def response_delete(self, request, obj_display, obj_id):
        if getattr(request, "dataset_kept", False):
            return HttpResponseRedirect(reverse("admin:marketplace_dataset_change", args=[obj_id]))
        return super().response_delete(request, obj_display, obj_id)

    @admin.action(description="Delete selected datasets (not while a job that has not finished uses one)",
                  permissions=["delete"])
    def delete_datasets(self, request, queryset: QuerySet[Dataset]):
        def act(dataset: Dataset) -> str:
            dataset_delete(dataset=dataset, actor=request.user)
            return f"'{dataset.name}'"
        act_on_each(self, request, queryset.order_by("pk"), act, done="Deleted {}.",
                    refused="Not deleted: ", refused_sep=" ")

    @admin.display(description="columns")
    def column_count(self, obj: Dataset) -> int:
        return len(obj.columns or [])

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj: Dataset) -> str:
        return filesizeformat(obj.size_bytes)

    @admin.display(description="SHA-256")
    def short_sha256(self, obj: Dataset) -> str:
        return obj.sha256[:12]


# --- Jobs and their timelines --------------------------------------------------------
class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "from_status", "to_status", "reason", "message", "actor"]
    readonly_fields = fields
    ordering = ["id"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("actor")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


TemplateFilter = fixed_choices_filter(
    "template", "template", lambda: [(t.name, t.title) for t in catalogue.templates().values()])


@admin.register(Job)
class JobAdmin(ViewOnlyWithActionsMixin, admin.ModelAdmin):
    list_display = ["id", "name", "owner", "template", "status", "resources", "max_price",
                    "budget_display", "deadline", "status_changed_at"]
    list_filter = ["status", TemplateFilter, "owner__sector"]
    search_fields = ["=id", "name", "owner__name", "created_by__username"]
    list_select_related = ["owner"]
    ordering = ["-id"]
    show_full_result_count = False
    inlines = [JobEventInline]
    actions = ["cancel_jobs"]
    fieldsets = [
        ("Job", {"fields": ["name", "owner", "created_by", "template", "params", "dataset_ref",
                            "dataset"]}),
        ("Resources and constraints", {"fields": ["resources", "min_gpu_memory_gb",
                                                  "gpu_models", "regions", "compliance",
                                                  "min_reliability"]}),
        ("Money and time", {"fields": ["max_price", "budget_display", "duration_hours",
                                       "deadline"]}),
        ("State (changed only by the job state machine)",
         {"fields": ["status", "status_changed_at", "created_at", "updated_at"]}),
    ]
    readonly_fields = ["resources", "max_price", "budget_display"]

    @admin.display(description="resources")
    def resources(self, obj: Job) -> str:
        unit = "CPU slots" if catalogue.CPU in (obj.gpu_models or []) else "GPUs"
        return f"{obj.nodes} × {obj.gpus_per_node} {unit}"

    @admin.display(description="max price", ordering="max_price_per_gpu_hour")
    def max_price(self, obj: Job) -> str:
        return price(obj.max_price_per_gpu_hour)

    @admin.display(description="budget", ordering="budget")
    def budget_display(self, obj: Job) -> str:
        return money(obj.budget)

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset: QuerySet[Job]):
        who = request.user.get_username()
        cancelled, refused = 0, []
        for job in queryset.order_by("pk"):
            try:
                before = job.events.count()
                job_cancel(job=job, actor=request.user, reason="cancelled_by_admin",
                           message=f"Cancelled by {who} (platform admin).")
            except MarketError as exc:
                refused.append(exc.message)
            else:
                if job.events.count() == before:  # a retried cancel is a no-op
                    refused.append(f"Job #{job.pk} was already cancelled.")
                else:
                    cancelled += 1
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} job(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not cancelled: " + " ".join(refused), messages.ERROR)


@admin.register(JobEvent)
class JobEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "job", "created_at", "from_status", "to_status", "reason", "actor"]
    list_filter = [fixed_choices_filter("to_status", "new status", Job.Status.choices)]
    search_fields = ["=job__id", "reason", "message"]
    list_select_related = ["job", "actor"]
    ordering = ["-id"]
    show_full_result_count = False
