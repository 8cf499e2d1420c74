from rest_framework import serializers

from usage.models import QuotaApplication, UsageRecord


class TodaySerializer(serializers.Serializer):
    day = serializers.DateField(help_text="The quota day (calendar day in Beijing time).")
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    used_tokens = serializers.IntegerField(help_text="Input plus output tokens.")
    reserved_tokens = serializers.IntegerField(
        help_text="Tokens held for requests still running; they become usage or are released."
    )
    requests = serializers.IntegerField()
    quota = serializers.IntegerField(help_text="Your daily quota in tokens.")
    remaining_tokens = serializers.IntegerField(
        help_text="What new requests may still use today: quota - used - reserved."
    )
    percent_used = serializers.FloatField()
    resets_at = serializers.DateTimeField(help_text="The next reset: 00:00 Beijing time.")
    seconds_until_reset = serializers.IntegerField()


class DayTotalsSerializer(serializers.Serializer):
    day = serializers.DateField()
    requests = serializers.IntegerField()
    errors = serializers.IntegerField(help_text="Requests answered with an HTTP status >= 400.")
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField(
        help_text="Of the input, tokens the model read from its prompt cache."
    )
    total_tokens = serializers.IntegerField()


class DailyQuerySerializer(serializers.Serializer):
    # ``from`` is a Python keyword: the fields are renamed in ``to_internal_value``.
    start = serializers.DateField(required=False)
    end = serializers.DateField(required=False)
    key = serializers.CharField(required=False, allow_blank=True, max_length=64)
    model = serializers.CharField(required=False, allow_blank=True, max_length=128)

    def to_internal_value(self, data):
        data = {
            "start": data.get("from") or None,
            "end": data.get("to") or None,
            "key": data.get("key", ""),
            "model": data.get("model", ""),
        }
        return super().to_internal_value({k: v for k, v in data.items() if v is not None})


class DailySerializer(serializers.Serializer):
    key = serializers.CharField(help_text="The key-name filter, or empty.")
    model = serializers.CharField(help_text="The model filter, or empty.")
    days = DayTotalsSerializer(many=True, help_text="One entry per day, zeros included.")

    def get_fields(self):
        # Named like the query parameters; ``from`` cannot be a class attribute. Declared
        # here rather than renamed in to_representation so that the schema says so too.
        fields = super().get_fields()
        fields["from"] = serializers.DateField(source="start", help_text="First day, inclusive.")
        fields["to"] = serializers.DateField(source="end", help_text="Last day, inclusive.")
        return fields


class UsageRecordSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id", read_only=True)
    key = serializers.CharField(source="key_name", read_only=True)

    class Meta:
        model = UsageRecord
        fields = [
            "id",
            "created_at",
            "day",
            "key",
            "model",
            "endpoint",
            "stream",
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "estimated",
            "playground",
            "status_code",
            "error_code",
            "latency_ms",
            "first_token_ms",
        ]
        read_only_fields = fields


class QuotaApplicationSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id", read_only=True)

    class Meta:
        model = QuotaApplication
        fields = [
            "id",
            "intended_use",
            "company",
            "expected_daily_tokens",
            "contact",
            "status",
            "review_reason",
            "created_at",
            "decided_at",
        ]
        read_only_fields = ["id", "status", "review_reason", "created_at", "decided_at"]
        extra_kwargs = {
            "intended_use": {"max_length": 2000},
            "expected_daily_tokens": {"min_value": 1},
        }
