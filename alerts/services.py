"""Writes of the alerts app: settings, the batched writer of crossings, delivery, the digest."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable

from django.db import transaction

from alerts.detection import DEFAULT_THRESHOLDS, Charge, charge_may_alert, thresholds_crossed
from alerts.models import Alert, AlertSettings
from alerts.selectors import alert_ids_for
from alerts.tasks import alert_deliver
from keys.crypto import UndecryptableSecret, decrypt_secret, encrypt_secret

logger = logging.getLogger(__name__)

WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - a label, not a secret


def webhook_secret_generate() -> str:
    return WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32)


def webhook_secret_of(settings_row: AlertSettings) -> str | None:
    """The signing secret in the clear; "" when there is none, None when it can no longer
    be decrypted (KEY_ENCRYPTION_KEY changed without the old key in KEY_ENCRYPTION_OLD_KEYS):
    the owner must make a new one, and the pages say so instead of failing."""
    if not settings_row.webhook_secret_encrypted:
        return ""
    try:
        return decrypt_secret(settings_row.webhook_secret_encrypted)
    except UndecryptableSecret:
        logger.error(
            "alert settings of %s: the webhook secret cannot be decrypted", settings_row.user_id
        )
        return None


def alert_settings_update(
    *, user, thresholds: list[int], key_thresholds: list[int], webhook_url: str
) -> AlertSettings:
    """Save the account's alert settings; a webhook gets a signing secret the first time."""
    row, _ = AlertSettings.objects.get_or_create(user=user)
    row.thresholds = sorted(set(thresholds))
    row.key_thresholds = sorted(set(key_thresholds))
    row.webhook_url = webhook_url
    if webhook_url and not row.webhook_secret_encrypted:
        row.webhook_secret_encrypted = encrypt_secret(webhook_secret_generate())
    row.save()
    return row


def alert_webhook_secret_regenerate(*, user) -> str:
    """A new signing secret; the old one stops being used at once."""
    row, _ = AlertSettings.objects.get_or_create(user=user)
    secret = webhook_secret_generate()
    row.webhook_secret_encrypted = encrypt_secret(secret)
    row.save(update_fields=["webhook_secret_encrypted", "updated_at"])
    return secret


def alert_crossings_record(*, charges: Iterable[Charge]) -> int:
    """Insert an ``Alert`` for every threshold the charges crossed, ignoring those that exist,
    and queue their delivery after commit. Returns the number of crossings found.

    Called by the gateway's record writer once per batch (never per request), with the
    charges that ``charge_may_alert`` let through. One query reads the settings of the
    batch's accounts; one insert writes the crossings.
    """
    charges = [
        c for c in charges if charge_may_alert(limit=c.limit, before=c.before, after=c.after)
    ]
    if not charges:
        return 0
    settings_of = {
        row.user_id: row
        for row in AlertSettings.objects.filter(user_id__in={c.user_id for c in charges})
    }
    rows = []
    for charge in charges:
        row = settings_of.get(charge.user_id)
        if row is None:
            thresholds = DEFAULT_THRESHOLDS
        else:
            thresholds = row.key_thresholds if charge.api_key_id else row.thresholds
        for threshold in thresholds_crossed(
            limit=charge.limit, before=charge.before, after=charge.after, thresholds=thresholds
        ):
            rows.append(
                Alert(
                    user_id=charge.user_id,
                    api_key_id=charge.api_key_id,
                    day=charge.day,
                    threshold=threshold,
                    limit_tokens=charge.limit,
                    used_tokens=charge.after,
                )
            )
    rows = _of_existing_owners(rows)
    if not rows:
        return 0
    slots = {(row.user_id, row.day) for row in rows}
    # The unique constraints drop a crossing recorded before (two processes, a retry).
    Alert.objects.bulk_create(rows, ignore_conflicts=True)
    transaction.on_commit(lambda: _queue_delivery(alert_ids_for(slots=slots)))
    return len(rows)


def _of_existing_owners(rows: list[Alert]) -> list[Alert]:
    """The crossings whose account and key still exist: a key deleted (or an account closed)
    between its request's settlement and this batch would fail the whole insert, and the
    batch would be retried for ever. Two small queries, only for a batch that crossed
    something."""
    accounts = Alert._meta.get_field("user").related_model
    keys = Alert._meta.get_field("api_key").related_model
    live_users = set(
        accounts.objects.filter(pk__in={row.user_id for row in rows}).values_list("pk", flat=True)
    )
    key_ids = {row.api_key_id for row in rows if row.api_key_id is not None}
    live_keys = (
        set(keys.objects.filter(pk__in=key_ids).values_list("pk", flat=True)) if key_ids else set()
    )
    return [
        row
        for row in rows
        if row.user_id in live_users and (row.api_key_id is None or row.api_key_id in live_keys)
    ]


def _queue_delivery(alert_ids: list[int]) -> None:
    try:
        for alert_id in alert_ids:
            alert_deliver.delay(alert_id)
    except Exception:
        # The broker is down: the rows are written, and the beat sweep queues them later.
        logger.warning("could not queue %d alerts; the sweep will", len(alert_ids), exc_info=True)
