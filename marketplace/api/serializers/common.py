"""What the serializers share: id and money bounds, tags; errors, tokens and the caller."""


from rest_framework import serializers

MAX_ID = 2**63 - 1
SMALL = 32767  # PositiveSmallIntegerField
MONEY = {"max_digits": 20, "decimal_places": 6}
UNIT = "tUSD/GPU-h"
# Null until there is something to show (no progress reported yet, no escrow).
NULLABLE_OBJECT = {"type": "object", "additionalProperties": {}, "nullable": True}


def _tags(max_items: int = 16):
    return serializers.ListField(child=serializers.CharField(max_length=32), max_length=max_items,
                                 required=False, default=list)


# --- Auth ----------------------------------------------------------------------------

class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=512, style={"input_type": "password"},
                                     trim_whitespace=False)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    field = serializers.CharField(allow_null=True)
    code = serializers.CharField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                   required=False)


# --- The caller ------------------------------------------------------------------------

class MeOrganizationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=["consumer", "provider"])
    is_suspended = serializers.BooleanField()


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    is_staff = serializers.BooleanField()
    organization = MeOrganizationSerializer(allow_null=True)
    role = serializers.ChoiceField(choices=["owner", "admin", "member"], allow_null=True,
                                   help_text="Your role in the organization.")
