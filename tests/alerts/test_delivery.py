import datetime as dt

import pytest
from django.core import mail

from accounts import sms
from alerts import delivery, tasks
from alerts.models import Alert, AlertSettings
from alerts.services import alert_settings_update
from alerts.webhooks import WebhookFailed, WebhookRefused
from usage.quota import quota_day

State = Alert.State


@pytest.fixture
def posts(monkeypatch):
    """Webhook posts made, and what the next ones do (an exception to raise, or a status)."""
    made: list[dict] = []
    outcomes: list = []

    def fake_post(*, url, secret, payload):
        made.append({"url": url, "secret": secret, "payload": payload})
        outcome = outcomes.pop(0) if outcomes else 200
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(delivery, "webhook_post", fake_post)
    return made, outcomes


@pytest.fixture
def retries_run_eagerly():
    # Eager tasks re-run themselves on ``retry`` unless the Retry propagates to the test.
    app = tasks.alert_deliver.app
    app.conf.task_eager_propagates = False
    yield
    app.conf.task_eager_propagates = True


def _alert(user, *, threshold=80, key=None):
    return Alert.objects.create(
        user=user,
        api_key=key,
        day=quota_day(),
        threshold=threshold,
        limit_tokens=500_000,
        used_tokens=400_000,
    )


def _with_webhook(user):
    alert_settings_update(
        user=user, thresholds=[80, 100], key_thresholds=[80], webhook_url="https://hooks.example/x"
    )


def test_it_emails_the_account(alice):
    alert = _alert(alice)
    delivery.alert_deliver(alert_id=alert.pk)
    [message] = mail.outbox
    assert message.to == ["alice@example.com"]
    assert "80%" in message.subject
    assert "400,000" in message.body and "500,000" in message.body
    alert.refresh_from_db()
    assert (alert.email_state, alert.sms_state, alert.webhook_state) == (
        State.SENT,
        State.SKIPPED,
        State.SKIPPED,
    )
    assert not alert.pending


def test_it_texts_a_phone_account(bob):
    alert = _alert(bob, threshold=100)
    delivery.alert_deliver(alert_id=alert.pk)
    [message] = sms.outbox
    assert message.to == bob.phone
    assert message.is_notice and "100%" not in message.code
    assert "400,000" in message.body
    assert message.notice_params == {"percent": "100", "limit": "500000"}
    alert.refresh_from_db()
    assert (alert.email_state, alert.sms_state) == (State.SKIPPED, State.SENT)


@pytest.mark.parametrize("backend", ["aliyun", "tencent"])
def test_it_sends_no_sms_through_a_template_provider_without_a_notice_template(
    bob, settings, backend, monkeypatch
):
    settings.SMS_BACKEND = backend
    settings.SMS_ALIYUN_NOTICE_TEMPLATE_CODE = ""
    settings.SMS_TENCENT_NOTICE_TEMPLATE_ID = ""
    monkeypatch.setattr(sms, "send_notice", pytest.fail)
    alert = _alert(bob)
    delivery.alert_deliver(alert_id=alert.pk)
    alert.refresh_from_db()
    assert alert.sms_state == State.SKIPPED


def test_it_signs_the_webhook_with_the_accounts_secret(alice, posts):
    made, _ = posts
    _with_webhook(alice)
    alert = _alert(alice)
    delivery.alert_deliver(alert_id=alert.pk)
    [post] = made
    assert post["url"] == "https://hooks.example/x"
    assert post["secret"].startswith("whsec_")
    assert post["payload"]["type"] == "quota.threshold_crossed"
    assert post["payload"]["threshold_percent"] == 80
    assert post["payload"]["scope"] == "account"
    alert.refresh_from_db()
    assert (alert.webhook_state, alert.webhook_attempts) == (State.SENT, 1)


def test_a_retry_sends_nothing_twice(alice, posts):
    made, outcomes = posts
    _with_webhook(alice)
    alert = _alert(alice)
    outcomes.append(WebhookFailed("webhook answered 503"))
    with pytest.raises(WebhookFailed):
        delivery.alert_deliver(alert_id=alert.pk)
    assert len(mail.outbox) == 1
    alert.refresh_from_db()
    assert (alert.email_state, alert.webhook_state, alert.pending) == (
        State.SENT,
        State.PENDING,
        True,
    )
    delivery.alert_deliver(alert_id=alert.pk)  # the worker's retry
    delivery.alert_deliver(alert_id=alert.pk)  # and a duplicate task
    assert len(mail.outbox) == 1
    assert len(made) == 2  # one failed attempt, one delivered
    alert.refresh_from_db()
    assert (alert.webhook_state, alert.webhook_attempts, alert.pending) == (State.SENT, 2, False)


def test_the_task_retries_a_failing_webhook_with_backoff(
    alice, posts, monkeypatch, retries_run_eagerly
):
    made, outcomes = posts
    _with_webhook(alice)
    alert = _alert(alice)
    outcomes.extend([WebhookFailed("timeout"), WebhookFailed("503")])
    countdowns = []
    real_retry = tasks.alert_deliver.retry

    def retry(*args, **kwargs):
        countdowns.append(kwargs["countdown"])
        return real_retry(*args, **kwargs)

    monkeypatch.setattr(tasks.alert_deliver, "retry", retry)
    tasks.alert_deliver.apply(args=[alert.pk])
    assert countdowns == [30, 60]
    assert len(made) == 3
    assert len(mail.outbox) == 1
    alert.refresh_from_db()
    assert alert.webhook_state == State.SENT


def test_the_task_gives_up_after_the_last_attempt(alice, posts, settings, retries_run_eagerly):
    made, outcomes = posts
    settings.ALERT_WEBHOOK_MAX_ATTEMPTS = 3
    _with_webhook(alice)
    alert = _alert(alice)
    outcomes.extend([WebhookFailed("503")] * 5)
    tasks.alert_deliver.apply(args=[alert.pk])
    assert len(made) == 3
    alert.refresh_from_db()
    assert (alert.webhook_state, alert.pending) == (State.FAILED, False)
    tasks.alert_deliver.apply(args=[alert.pk])
    assert len(made) == 3


def test_attempts_are_capped_across_task_chains(alice, posts, settings):
    """Each call stands for a new chain (the sweeper, a task queued again): the count on the
    alert caps them all, not each chain's own retries."""
    made, outcomes = posts
    settings.ALERT_WEBHOOK_MAX_ATTEMPTS = 3
    _with_webhook(alice)
    alert = _alert(alice)
    outcomes.extend([WebhookFailed("503")] * 5)
    for _chain in range(2):
        with pytest.raises(WebhookFailed):
            delivery.alert_deliver(alert_id=alert.pk)
    delivery.alert_deliver(alert_id=alert.pk)  # the last attempt gives up instead of raising
    delivery.alert_deliver(alert_id=alert.pk)
    assert len(made) == 3
    alert.refresh_from_db()
    assert (alert.webhook_state, alert.webhook_attempts, alert.pending) == (
        State.FAILED,
        3,
        False,
    )


def test_a_chain_started_after_the_last_attempt_sends_nothing(alice, posts, settings):
    made, _outcomes = posts
    settings.ALERT_WEBHOOK_MAX_ATTEMPTS = 3
    _with_webhook(alice)
    alert = _alert(alice)
    Alert.objects.filter(pk=alert.pk).update(webhook_attempts=3)
    tasks.alert_deliver.apply(args=[alert.pk])
    assert made == []
    assert len(mail.outbox) == 1  # the other channels still go
    alert.refresh_from_db()
    assert (alert.webhook_state, alert.webhook_attempts, alert.pending) == (
        State.FAILED,
        3,
        False,
    )


def test_a_refused_webhook_is_not_retried(alice, posts):
    made, outcomes = posts
    assert made == []
    _with_webhook(alice)
    alert = _alert(alice)
    outcomes.append(WebhookRefused("non-public address"))
    delivery.alert_deliver(alert_id=alert.pk)
    delivery.alert_deliver(alert_id=alert.pk)
    assert len(made) == 1
    alert.refresh_from_db()
    assert (alert.webhook_state, alert.pending) == (State.FAILED, False)


def test_a_saved_url_with_a_bad_port_fails_the_webhook_for_good(alice):
    """Through the real ``webhook_post``: a URL saved before the form checked ports is
    refused (failed, not retried), so the alert does not stay pending."""
    _with_webhook(alice)
    AlertSettings.objects.filter(user=alice).update(webhook_url="https://hooks.example:99999/x")
    alert = _alert(alice)
    tasks.alert_deliver.apply(args=[alert.pk])
    alert.refresh_from_db()
    assert (alert.webhook_state, alert.pending) == (State.FAILED, False)


def test_the_sweeper_queues_alerts_whose_task_was_lost(alice, time_machine):
    time_machine.move_to(dt.datetime(2026, 3, 10, 4, 0, tzinfo=dt.UTC), tick=False)
    lost = _alert(alice)
    time_machine.move_to(dt.datetime(2026, 3, 10, 4, 30, tzinfo=dt.UTC), tick=False)
    _alert(alice, threshold=100)  # just created: its own task is on the way
    assert tasks.alerts_deliver_pending() == 1
    lost.refresh_from_db()
    assert not lost.pending
    assert len(mail.outbox) == 1


def test_key_alerts_name_the_key(alice, posts):
    made, _ = posts
    _with_webhook(alice)
    key = alice.api_keys.get()
    alert = _alert(alice, key=key)
    delivery.alert_deliver(alert_id=alert.pk)
    assert key.name in mail.outbox[0].subject
    assert made[0]["payload"]["scope"] == "key"
    assert made[0]["payload"]["key_name"] == key.name
