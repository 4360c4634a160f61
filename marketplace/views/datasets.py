from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render

from ..errors import MarketError
from ..forms import DatasetUploadForm
from ..services.datasets import dataset_upload
from .common import org_required


@org_required("consumer")
def dataset_list(request):
    """The organization's uploaded datasets, and a form to add one."""
    form = DatasetUploadForm()
    if request.method == "POST":
        form = DatasetUploadForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                ds = dataset_upload(owner=request.org, actor=request.user,
                                    uploaded_file=form.cleaned_data["file"],
                                    name=form.cleaned_data["name"],
                                    label_column=form.cleaned_data["label_column"])
            except MarketError as exc:
                form.add_market_error(exc)
            else:
                messages.success(request, f"Uploaded “{ds.name}”: {ds.rows:,} rows, "
                                          f"{len(ds.columns)} columns.")
                return redirect("datasets")
    return render(request, "datasets/list.html", {
        "form": form, "datasets": request.org.datasets.all()[:200],
        "max_mb": settings.DATASET_MAX_BYTES // 1_048_576,
        "upload_max_gb": round(settings.UPLOAD_MAX_BYTES / 1e9, 1),
    })
