"""The REST API: tokens and the caller (who a token belongs to)."""


from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import Throttled, ValidationError
from rest_framework.parsers import FormParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from ..selectors.accounts import membership_of
from ..services import login_throttle
from . import serializers as s
from .common import AUTH, _errors
from .parsers import DepthLimitedJSONParser

# --- Auth ----------------------------------------------------------------------------

class TokenView(APIView):
    """Exchange a username and password for an API token (`Authorization: Token <key>`)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    parser_classes = [DepthLimitedJSONParser, FormParser]

    @extend_schema(request=s.TokenRequestSerializer,
                   responses={200: s.TokenSerializer, **_errors(400, 429)}, auth=[])
    def post(self, request):
        data = s.TokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # The login page's throttle too (services/login_throttle.py): by account and address.
        username, address = data.validated_data["username"], login_throttle.client_address(request)
        if wait := login_throttle.login_wait(username=username, address=address):
            raise Throttled(wait=wait, detail=login_throttle.wait_message(wait))
        user = authenticate(request=request._request, username=username,
                            password=data.validated_data["password"])
        if user is None or not user.is_active:
            login_throttle.login_failed(username=username, address=address)
            raise ValidationError({"non_field_errors": [
                "Unable to log in with that username and password."]}, code="authorization")
        login_throttle.login_succeeded(username=username)
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


# --- The caller ----------------------------------------------------------------------

class MeView(APIView):
    """Who the token belongs to: the user, the organization and the role in it."""

    authentication_classes = AUTH
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Who you are", responses={200: s.MeSerializer, **_errors(401)})
    def get(self, request):
        member = membership_of(request.user)
        org = member.organization if member is not None else None
        return Response(s.MeSerializer({
            "username": request.user.get_username(), "is_staff": request.user.is_staff,
            "organization": org, "role": member.role if member is not None else None}).data)
