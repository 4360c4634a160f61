"""Staff over the API: suspend an organization, or lift its suspension
(services/suspension.py; the admin's actions call the same service)."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, viewsets
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.decorators import action
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from ..errors import NotFound
from ..models import Organization
from ..services import suspension
from .serializers import ErrorSerializer


class SuspendInput(serializers.Serializer):
    reason = serializers.CharField(max_length=500)


State = inline_serializer("OrganizationSuspension", {
    "id": serializers.IntegerField(), "name": serializers.CharField(),
    "is_suspended": serializers.BooleanField()})
ERROR = ErrorSerializer


def _state(org: Organization) -> dict:
    return {"id": org.pk, "name": org.name, "is_suspended": org.is_suspended}


class OrganizationViewSet(viewsets.ViewSet):
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [IsAdminUser]
    lookup_value_regex = r"\d{1,18}"

    def _organization(self, pk) -> Organization:
        org = Organization.objects.filter(pk=pk).first()
        if org is None:
            raise NotFound("No such organization.")
        return org

    @extend_schema(summary="Suspend an organization (staff): its agents are disconnected, its offers "
                           "leave the market, its running work resumes elsewhere, and it can add no "
                           "node, offer or job", request=SuspendInput,
                   responses={200: State, 400: ERROR, 401: ERROR, 403: ERROR, 404: ERROR})
    @action(detail=True, methods=["post"])
    def suspend(self, request, pk=None):
        data = SuspendInput(data=request.data)
        data.is_valid(raise_exception=True)
        org = suspension.organization_suspend(organization=self._organization(pk), actor=request.user,
                                              reason=data.validated_data["reason"])
        return Response(_state(org))

    @extend_schema(summary="Lift an organization's suspension (staff); its offers stay paused until "
                           "the provider resumes them", request=None,
                   responses={200: State, 401: ERROR, 403: ERROR, 404: ERROR})
    @action(detail=True, methods=["post"])
    def unsuspend(self, request, pk=None):
        org = suspension.organization_unsuspend(organization=self._organization(pk), actor=request.user)
        return Response(_state(org))
