from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from keys.models import ApiKey
from keys.services import NAME_MAX_LENGTH


class ApiKeySerializer(serializers.ModelSerializer):
    """A key as listed: never its secret, only the masked prefix."""

    id = serializers.UUIDField(source="public_id", read_only=True)
    masked_key = serializers.CharField(
        source="masked", read_only=True, help_text="The key's public prefix followed by dots."
    )
    rate_limit_rpm = serializers.IntegerField(
        source="effective_rate_limit_rpm",
        read_only=True,
        help_text="Requests per minute allowed for this key.",
    )
    rate_limit_tpm = serializers.IntegerField(
        source="effective_rate_limit_tpm",
        read_only=True,
        help_text="Tokens per minute allowed for this key.",
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "masked_key",
            "prefix",
            "is_active",
            "rate_limit_rpm",
            "rate_limit_tpm",
            "created_at",
            "last_used_at",
        ]
        read_only_fields = fields


class ApiKeyWithSecretSerializer(ApiKeySerializer):
    """A key together with its secret: only from create, regenerate and reveal."""

    key = serializers.SerializerMethodField(
        help_text="The secret: send it as `Authorization: Bearer <key>`. Keep it safe."
    )

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField())
    def get_key(self, obj) -> str:
        return self.context["secret"]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(
        max_length=NAME_MAX_LENGTH,
        help_text="Unique among your keys (ignoring case); surrounding spaces are trimmed.",
    )


class ApiKeyUpdateSerializer(serializers.Serializer):
    """PUT sends both fields; PATCH any of them."""

    name = serializers.CharField(max_length=NAME_MAX_LENGTH)
    is_active = serializers.BooleanField(
        help_text="False disables the key: the model API refuses it."
    )
