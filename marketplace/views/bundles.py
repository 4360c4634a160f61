"""The Code bundles page: a consumer's own training code, uploaded in resumable chunks from
the browser (static/js/resumable_upload.js, through /api/v1/uploads/), listed and deleted."""

from django.conf import settings
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from .. import runtimes
from ..errors import MarketError
from ..models import CodeBundle
from ..services.bundles import bundle_delete
from .common import org_required


@org_required("consumer")
def bundle_list(request):
    return render(request, "bundles/list.html", {
        "bundles": CodeBundle.objects.filter(owner=request.org)[:200],
        "runtimes": list(runtimes.runtimes().values()),
        "max_mb": settings.BUNDLE_MAX_BYTES // 1_048_576,
    })


@require_POST
@org_required("consumer")
def bundle_delete_view(request, pk: int):
    bundle = get_object_or_404(CodeBundle, pk=pk, owner=request.org)
    try:
        bundle_delete(bundle=bundle, actor=request.user)
    except MarketError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Deleted code bundle “{bundle.name}”.")
    return redirect("bundles")
