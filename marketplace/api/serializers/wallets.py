"""Wallets: linking one by a signed message, the payout wallet and its delayed change."""

import re

from rest_framework import serializers

# --- Wallets -------------------------------------------------------------------------

class WalletSerializer(serializers.Serializer):
    """A wallet of the caller's organization (never its key)."""

    id = serializers.IntegerField()
    address = serializers.CharField(help_text="EIP-55 checksummed.")
    kind = serializers.ChoiceField(choices=["custodial", "external"])
    is_payout = serializers.BooleanField(help_text="Where the organization is paid (providers).")
    linked_by = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()

    def get_linked_by(self, wallet) -> str | None:
        return wallet.linked_by.get_username() if wallet.linked_by_id else None


class PayoutChangeSerializer(serializers.Serializer):
    """Where the organization is paid, and the change waiting for its delay."""

    payout_address = serializers.CharField(allow_null=True, help_text="Paid here now.")
    pending_address = serializers.CharField(allow_null=True,
                                            help_text="Paid here from `effective_at` (null: none pending).")
    effective_at = serializers.DateTimeField(allow_null=True)
    requested_by = serializers.CharField(allow_null=True)


class SiweNonceSerializer(serializers.Serializer):
    """What the browser needs to build the EIP-4361 message it signs."""

    nonce = serializers.CharField()
    expires_at = serializers.DateTimeField(help_text="Use it as the message's Expiration Time.")
    domain = serializers.CharField(help_text="This host: the message's domain.")
    uri = serializers.CharField(help_text="The message's URI.")
    chain_id = serializers.IntegerField(help_text="The platform's chain (EIP-155).")
    statement = serializers.CharField()
    address = serializers.CharField(allow_null=True, help_text="The `address` query parameter, "
                                    "EIP-55 checksummed (wallets answer in lower case).")


# The siwe parser's time grows with the square of a message's length (a 4,000-character
# line took 20 s of CPU): a real message is ~450 characters and starts with this line.
SIWE_MAX_CHARS = 1000
SIWE_FIRST_LINE = re.compile(r"^[^\n]{1,253} wants you to sign in with your Ethereum account:\n"
                             r"0x[0-9a-fA-F]{40}\n")


class WalletLinkSerializer(serializers.Serializer):
    message = serializers.CharField(max_length=SIWE_MAX_CHARS, trim_whitespace=False,
                                    help_text="The EIP-4361 message, as signed.")
    signature = serializers.RegexField(r"^0x[0-9a-fA-F]{130}$", help_text="The personal_sign "
                                       "(EIP-191) signature, 65 bytes hex.")

    def validate_message(self, value: str) -> str:
        if not SIWE_FIRST_LINE.match(value):
            raise serializers.ValidationError(
                "The message is not a Sign-In with Ethereum (EIP-4361) message: it starts with "
                "'<domain> wants you to sign in with your Ethereum account:' and the address on "
                "the next line.", code="malformed_message")
        return value
