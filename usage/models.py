"""Quota and usage.

``DailyUsage`` is the authority for enforcement: one row per (account, quota day), so a new day
starts from zero by construction and nothing rolls over even if the daily job runs late.
``Reservation`` rows are requests in flight (reserve, then settle); ``UsageRecord`` is the
per-request ledger; ``DailyRollup`` is what the dashboard reads.
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _


class DailyUsage(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="daily_usage"
    )
    day = models.DateField(help_text="The quota day, in QUOTA_TIMEZONE.")
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reserved_tokens = models.BigIntegerField(default=0)
    requests = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "day"], name="usage_dailyusage_unique_user_day"
            ),
            models.CheckConstraint(
                condition=Q(reserved_tokens__gte=0)
                & Q(input_tokens__gte=0)
                & Q(output_tokens__gte=0),
                name="usage_dailyusage_non_negative",
            ),
        ]
        indexes = [models.Index(fields=["day"], name="usage_daily_day_idx")]

    def __str__(self):
        return (
            f"{self.user_id} {self.day}: {self.used_tokens} used, {self.reserved_tokens} reserved"
        )

    @property
    def used_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class KeyDailyUsage(models.Model):
    """The daily-cap counter of one key on one quota day: tokens charged and tokens held by
    requests in flight. Only keys with a ``daily_token_cap`` have rows; the reservation that
    holds the account's quota (``usage.ledger``) moves this counter in the same statement."""

    api_key = models.ForeignKey("keys.ApiKey", on_delete=models.CASCADE, related_name="+")
    day = models.DateField(help_text="The quota day, in QUOTA_TIMEZONE.")
    used_tokens = models.BigIntegerField(default=0)
    reserved_tokens = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "day"], name="usage_keydaily_unique"),
            models.CheckConstraint(
                condition=Q(used_tokens__gte=0) & Q(reserved_tokens__gte=0),
                name="usage_keydaily_non_negative",
            ),
        ]
        indexes = [models.Index(fields=["day"], name="usage_keydaily_day_idx")]

    def __str__(self):
        used, reserved = self.used_tokens, self.reserved_tokens
        return f"{self.api_key_id} {self.day}: {used} used, {reserved} reserved"


class Reservation(models.Model):
    """Tokens held for a request in flight. Deleted when the request settles.

    A row that outlives its request (a killed worker) is released by the sweeper in the daily
    reset and by ``usage_release_stale_reservations``.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    tokens = models.BigIntegerField()
    created_at = models.DateTimeField(db_index=True)
    # Renewed by the live request's process (``gateway.serving.pipeline``, one statement per
    # interval for all its requests): the sweeper leaves a reservation alone while its lease
    # runs, so a long request keeps its tokens. NULL for rows written before leases existed.
    lease_until = models.DateTimeField(null=True, blank=True)
    # The key whose daily cap also holds these tokens (``KeyDailyUsage(capped_key_id, day)``);
    # NULL for a key without a cap. A plain id, not a foreign key: a key deleted while its
    # request runs leaves nothing to release, and the hot insert checks no constraint.
    capped_key_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(tokens__gte=0), name="usage_reservation_non_negative"
            ),
        ]

    def __str__(self):
        return f"{self.user_id} {self.day}: {self.tokens} reserved"


class UsageRecord(models.Model):
    """One row per gateway request: the ledger the counters must agree with.

    On PostgreSQL the table is partitioned by ``created_at``, one partition per quota day
    (migration 0006, ``usage.ledger.partitions``); SQLite keeps a plain table. PostgreSQL's
    primary key is (id, created_at) and ``public_id``'s unique constraint is (public_id,
    created_at), as a partitioned table requires; Django's ``id`` as the primary key is still
    true: ids come from one sequence and are never written by hand.
    """

    class Endpoint(models.TextChoices):
        OPENAI_CHAT = "openai.chat", "OpenAI chat completions"
        OPENAI_RESPONSES = "openai.responses", "OpenAI responses"
        ANTHROPIC_MESSAGES = "anthropic.messages", "Anthropic messages"
        ANTHROPIC_COUNT_TOKENS = "anthropic.count_tokens", "Anthropic count tokens"
        OPENAI_EMBEDDINGS = "openai.embeddings", "OpenAI embeddings"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # Indexed by the (user, -created_at, -id) index below, which serves every lookup by user.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    api_key = models.ForeignKey(
        "keys.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Kept so that history still reads well after a key is deleted or renamed.
    key_name = models.CharField(max_length=64)
    model = models.CharField(max_length=128)
    endpoint = models.CharField(max_length=32, choices=Endpoint.choices)
    stream = models.BooleanField(default=False)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    # Of the input, the tokens the upstream read from its prompt cache (as it reported them).
    # ``input_tokens`` is what was charged: with CACHED_INPUT_TOKEN_WEIGHT below 1 these count
    # at that weight in it, so input + output stays the request's charge.
    # A database default too: rows written by raw SQL that predates the column stay valid.
    cached_input_tokens = models.BigIntegerField(default=0, db_default=0)
    # True when the upstream reported no usage and a local estimate was charged instead.
    estimated = models.BooleanField(default=False)
    # The upstream endpoint (gateway.UpstreamEndpoint's id) that served the request; null when
    # none did (refused before the upstream, or every endpoint failed) or for the implicit
    # endpoint of a model without endpoint rows. A plain id, not a foreign key: records
    # outlive endpoints, and the partitioned table takes no foreign key to it.
    upstream_endpoint_id = models.BigIntegerField(null=True, blank=True)
    # Sent from the portal's Playground (``X-Playground: 1``), not by a program.
    playground = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True, default="")
    latency_ms = models.PositiveIntegerField(default=0)
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    day = models.DateField(help_text="The quota day, in QUOTA_TIMEZONE.")
    created_at = models.DateTimeField()

    class Meta:
        indexes = [
            # The requests list's order exactly: on partitioned PostgreSQL each day's index
            # scan is merged and the page stops after its rows (no sort of the account's).
            models.Index(
                fields=["user", "-created_at", "-id"], name="usage_record_user_time_id_idx"
            ),
            models.Index(fields=["created_at"], name="usage_record_time_idx"),
            # Quota refusals only (a small share of records): the staff overview counts
            # today's without reading the day's records.
            models.Index(
                fields=["created_at"],
                condition=Q(error_code="insufficient_quota"),
                name="usage_record_quota_refused_idx",
            ),
        ]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.model} {self.status_code}"


class DailyRollup(models.Model):
    """Per (account, key, model, quota day) sums, updated as requests settle."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(
        "keys.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    key_name = models.CharField(max_length=64)
    model = models.CharField(max_length=128)
    day = models.DateField()
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    # A database default too: rows written by raw SQL that predates the column stay valid.
    cached_input_tokens = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "key_name", "model", "day"], name="usage_rollup_unique_slot"
            ),
        ]
        indexes = [
            models.Index(fields=["user", "day"], name="usage_rollup_user_day_idx"),
            # The staff overview's platform totals per day and model.
            models.Index(fields=["day", "model"], name="usage_rollup_day_model_idx"),
        ]

    def __str__(self):
        return f"{self.day} {self.key_name} {self.model}"


class QuotaChange(models.Model):
    """Audit record of every change to an account's daily quota."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota_changes"
    )
    old_quota = models.BigIntegerField(null=True, help_text="NULL = the platform default.")
    new_quota = models.BigIntegerField(null=True, help_text="NULL = the platform default.")
    reason = models.TextField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.user_id}: {self.old_quota} -> {self.new_quota}"


class QuotaApplication(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        APPROVED = "approved", _("Approved")
        REJECTED = "rejected", _("Rejected")

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota_applications"
    )
    intended_use = models.TextField(_("intended use"))
    company = models.CharField(_("company or project"), max_length=200, blank=True)
    expected_daily_tokens = models.PositiveBigIntegerField(_("expected daily tokens"))
    contact = models.CharField(_("contact"), max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    review_reason = models.TextField(_("reason"), blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["user"],
                condition=Q(status="pending"),
                name="usage_application_one_pending_per_user",
            ),
            models.CheckConstraint(
                condition=~Q(status="rejected") | ~Q(review_reason=""),
                name="usage_application_rejection_has_reason",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "created_at"], name="usage_application_queue_idx")
        ]

    def __str__(self):
        return f"{self.user_id} {self.status} ({self.expected_daily_tokens})"


class QuotaReset(models.Model):
    """One row per run of the daily reset, with what it did."""

    day = models.DateField(help_text="The last quota day this run closed.")
    # More than one when the run caught up after missed days (beat down, worker stopped).
    days_closed = models.PositiveSmallIntegerField(default=0)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    reservations_released = models.BigIntegerField(default=0)
    tokens_released = models.BigIntegerField(default=0)
    rollups_written = models.BigIntegerField(default=0)
    records_pruned = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self):
        return f"reset of {self.day}"
