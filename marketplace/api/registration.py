"""POST /api/v1/node-registrations/: `computemesh-agent register` redeems a one-time code
from the Add a machine page with what it measured. The code is the credential (no user
token): it creates a node for the organization that asked for the code, and nothing else."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from ..money import exact
from ..services.registration import registration_code_redeem


class RegistrationSerializer(serializers.Serializer):
    code = serializers.CharField(max_length=200)
    name = serializers.CharField(max_length=80, required=False, allow_blank=True, default="")
    hardware = serializers.DictField(help_text="What the agent detected (workers/agent/hardware.py).")
    benchmark_tflops = serializers.FloatField(required=False, allow_null=True, default=None,
                                              min_value=0, max_value=1e6)


Registered = inline_serializer("NodeRegistered", {
    "node": serializers.DictField(), "token": serializers.CharField(),
    "offer": serializers.DictField(), "next": serializers.ListField(child=serializers.CharField())})


class NodeRegistrationView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(summary="Register this machine with a one-time code (the agent's register command)",
                   request=RegistrationSerializer,
                   responses={201: Registered, 400: OpenApiResponse(description="Invalid report."),
                              403: OpenApiResponse(description="Unknown, used or expired code.")})
    def post(self, request):
        data = RegistrationSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        node, token, offer = registration_code_redeem(code=v["code"], hardware=v["hardware"],
                                                      benchmark_tflops=v["benchmark_tflops"], name=v["name"])
        return Response({
            "node": {"id": node.pk, "name": node.name, "gpu_model": node.gpu_model,
                     "gpu_count": node.gpu_count, "gpu_memory_gb": node.gpu_memory_gb, "region": node.region,
                     "provider": node.provider.name},
            "token": token,
            "offer": {"id": offer.pk, "status": offer.status, "gpus_offered": offer.gpus_offered,
                      "price_per_gpu_hour": exact(offer.price_per_gpu_hour)},
            "next": ["Start the agent: computemesh-agent --server <url> (it reads the saved token).",
                     f"Price and publish draft offer #{offer.pk} on My offers: it is not listed until then."],
        }, status=status.HTTP_201_CREATED)
