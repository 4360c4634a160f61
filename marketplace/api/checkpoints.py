"""A job's partial result over the API: the newest checkpoint the platform trusts (what a
cancelled, failed, paused or interrupted job's consumer paid for). Its owner organization
downloads it, staff too (disputes); another tenant gets a 404, as everywhere."""

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from ..errors import NotFound
from ..selectors.checkpoints import partial_result
from ..selectors.ownership import JobAction, job_for


def partial_result_owner_action(user) -> JobAction:
    """Staff see every job (to look into a dispute); everyone else only their organization's."""
    return JobAction.VIEW if user.is_staff else JobAction.OWN


class JobCheckpointView(APIView):
    """GET /api/v1/jobs/{id}/checkpoint/: the partial result's bytes, its step and SHA-256 in
    the X-Checkpoint-Step and X-Checkpoint-SHA256 headers."""

    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Download the job's partial result (its newest trusted checkpoint)",
                   request=None,
                   responses={(200, "application/octet-stream"): OpenApiTypes.BINARY,
                              401: OpenApiResponse(description="Not signed in."),
                              404: OpenApiResponse(description="No such job among yours, or no "
                                                               "trusted checkpoint yet.")})
    def get(self, request, pk: int):
        job = job_for(request.user, pk, partial_result_owner_action(request.user))
        ckpt = partial_result(job.pk)
        if ckpt is None:
            raise NotFound(f"Job #{job.pk} has no trusted checkpoint to download (a checkpoint "
                           "counts once it has been checked and its work replayed).")
        response = FileResponse(ckpt.file.open("rb"), as_attachment=True,
                                filename=f"computemesh-job-{job.pk}-step-{ckpt.step}.pt")
        response["X-Checkpoint-Step"] = str(ckpt.step)
        response["X-Checkpoint-SHA256"] = ckpt.sha256
        return response
