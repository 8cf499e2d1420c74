from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from keys.controls import (
    DAILY_TOKEN_CAP_MAX,
    MAX_ALLOWED_IPS,
    MAX_ALLOWED_MODELS,
    MAX_CONCURRENT_REQUESTS_MAX,
    MODEL_NAME_MAX_LENGTH,
)
from keys.models import ApiKey, ApiKeyChange
from keys.services import NAME_MAX_LENGTH


class BoundedListField(serializers.ListField):
    """A ``ListField`` that refuses a list longer than ``max_length`` before validating its
    items (DRF's own check runs after every item is validated, whatever the length)."""

    def to_internal_value(self, data):
        if self.max_length is not None and isinstance(data, list) and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


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
            "daily_token_cap",
            "allowed_models",
            "expires_at",
            "is_expired",
            "allowed_ips",
            "max_concurrent_requests",
            "created_at",
            "last_used_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "daily_token_cap": {
                "help_text": "Tokens this key may use per quota day (inside the account's "
                "quota); null: no cap."
            },
            "allowed_models": {"help_text": "Public model names this key may use; empty: all."},
            "expires_at": {"help_text": "After this time the key is refused; null: never."},
            "allowed_ips": {
                "help_text": "Client addresses and CIDR ranges (IPv4, IPv6) the key may be "
                "used from, normalised; empty: any."
            },
            "max_concurrent_requests": {
                "help_text": "Requests in flight at once with this key; null: no limit."
            },
        }

    is_expired = serializers.BooleanField(
        read_only=True, help_text="True once `expires_at` has passed."
    )
    allowed_models = serializers.ListField(child=serializers.CharField(), read_only=True)
    allowed_ips = serializers.ListField(child=serializers.CharField(), read_only=True)


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


class ApiKeyControlsSerializer(serializers.Serializer):
    """A key's own limits, all optional: an absent field is left as it is, null (or an empty
    list) removes the limit."""

    daily_token_cap = serializers.IntegerField(
        min_value=1,
        max_value=DAILY_TOKEN_CAP_MAX,
        allow_null=True,
        required=False,
        help_text="Tokens per quota day (midnight Beijing time), inside the account's quota.",
    )
    allowed_models = BoundedListField(
        child=serializers.CharField(max_length=MODEL_NAME_MAX_LENGTH),
        max_length=MAX_ALLOWED_MODELS,
        required=False,
        help_text="Public model names; any other model is refused with 403 model_not_allowed.",
    )
    expires_at = serializers.DateTimeField(
        allow_null=True,
        required=False,
        help_text="ISO 8601 with a time zone, in the future; afterwards 401 key_expired.",
    )
    allowed_ips = BoundedListField(
        child=serializers.CharField(max_length=64),
        max_length=MAX_ALLOWED_IPS,
        required=False,
        help_text="IPv4/IPv6 addresses and CIDR ranges (`203.0.113.0/24`, `2001:db8::/32`); "
        "other client addresses are refused with 403 ip_not_allowed.",
    )
    max_concurrent_requests = serializers.IntegerField(
        min_value=1,
        max_value=MAX_CONCURRENT_REQUESTS_MAX,
        allow_null=True,
        required=False,
        help_text="Requests in flight at once with this key.",
    )


class ApiKeyCreateSerializer(ApiKeyControlsSerializer):
    name = serializers.CharField(
        max_length=NAME_MAX_LENGTH,
        help_text="Unique among your keys (ignoring case); surrounding spaces are trimmed.",
    )


class ApiKeyUpdateSerializer(ApiKeyControlsSerializer):
    """PUT sends name and is_active; PATCH any field. Limits absent are left as they are."""

    name = serializers.CharField(max_length=NAME_MAX_LENGTH)
    is_active = serializers.BooleanField(
        help_text="False disables the key: the model API refuses it."
    )


class ApiKeyChangeSerializer(serializers.ModelSerializer):
    """One change of a key's limits: when, by whom, and the values before and after."""

    by = serializers.SerializerMethodField(
        help_text="`you`, `staff` or `platform` (a task or command)."
    )

    class Meta:
        model = ApiKeyChange
        fields = ["created_at", "by", "before", "after"]
        read_only_fields = fields

    def get_by(self, obj) -> str:
        if obj.actor_id is None:
            return "platform"
        return "you" if obj.actor_id == obj.user_id else "staff"
