import datetime as dt

import pytest
import time_machine
from django.core import mail

from alerts.detection import Charge
from alerts.models import Alert
from alerts.services import alert_crossings_record, alert_settings_update
from usage.quota import quota_day

BEIJING = dt.timezone(dt.timedelta(hours=8))


def _charge(user, *, before, after, limit=1000, key=None, day=None):
    return Charge(
        user_id=user.pk,
        api_key_id=key.pk if key else None,
        day=day or quota_day(),
        limit=limit,
        before=before,
        after=after,
    )


def test_it_records_an_alert_for_a_crossed_threshold(alice, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        assert alert_crossings_record(charges=[_charge(alice, before=700, after=810)]) == 1
    alert = Alert.objects.get()
    assert (alert.user, alert.api_key, alert.threshold) == (alice, None, 80)
    assert (alert.limit_tokens, alert.used_tokens) == (1000, 810)


def test_it_records_two_alerts_when_one_charge_crosses_80_and_100(
    alice, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        alert_crossings_record(charges=[_charge(alice, before=100, after=1000)])
    assert sorted(Alert.objects.values_list("threshold", flat=True)) == [80, 100]
    assert len(mail.outbox) == 2
    assert [m.to for m in mail.outbox] == [["alice@example.com"], ["alice@example.com"]]


def test_it_ignores_a_crossing_detected_twice(alice, django_capture_on_commit_callbacks):
    # Two gateway processes settling at once can both see the crossing.
    with django_capture_on_commit_callbacks(execute=True):
        alert_crossings_record(charges=[_charge(alice, before=700, after=810)])
        alert_crossings_record(
            charges=[_charge(alice, before=700, after=820), _charge(alice, before=790, after=830)]
        )
    assert Alert.objects.count() == 1
    assert len(mail.outbox) == 1


def test_it_keeps_key_alerts_apart_from_account_alerts(alice, django_capture_on_commit_callbacks):
    key = alice.api_keys.get()
    with django_capture_on_commit_callbacks(execute=True):
        alert_crossings_record(
            charges=[
                _charge(alice, before=700, after=810),
                _charge(alice, before=70, after=81, limit=100, key=key),
                _charge(alice, before=81, after=85, limit=100, key=key),
            ]
        )
    rows = Alert.objects.order_by("api_key_id").values_list("api_key_id", "threshold")
    assert sorted(rows, key=lambda row: row[0] or 0) == [(None, 80), (key.pk, 80)]


def test_it_follows_the_accounts_own_thresholds(alice, bob, django_capture_on_commit_callbacks):
    alert_settings_update(user=alice, thresholds=[50], key_thresholds=[], webhook_url="")
    alert_settings_update(user=bob, thresholds=[], key_thresholds=[], webhook_url="")
    with django_capture_on_commit_callbacks(execute=True):
        alert_crossings_record(
            charges=[_charge(alice, before=0, after=1000), _charge(bob, before=0, after=1000)]
        )
    assert list(Alert.objects.values_list("user_id", "threshold")) == [(alice.pk, 50)]


def test_it_reads_settings_in_one_query_per_batch(
    alice, bob, charlie, django_assert_num_queries, django_capture_on_commit_callbacks
):
    charges = [_charge(user, before=0, after=900) for user in (alice, bob, charlie)]
    # the settings, the accounts that still exist, the insert: nothing per charge
    with django_capture_on_commit_callbacks(execute=False), django_assert_num_queries(3):
        alert_crossings_record(charges=charges)
    assert Alert.objects.count() == 3


def test_a_key_deleted_before_the_batch_does_not_fail_the_others(
    alice, bob, django_capture_on_commit_callbacks
):
    # The key's charge was queued by its last request; the owner deleted the key before the
    # recorder's next flush. Its crossing is dropped; the rest of the batch is written.
    key = alice.api_keys.get()
    charges = [_charge(alice, before=700, after=810, key=key), _charge(bob, before=0, after=900)]
    key.delete()
    with django_capture_on_commit_callbacks(execute=False):
        assert alert_crossings_record(charges=charges) == 1
    assert list(Alert.objects.values_list("user_id", "api_key_id")) == [(bob.pk, None)]


def test_it_does_nothing_for_charges_that_cross_nothing(alice, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert alert_crossings_record(charges=[_charge(alice, before=10, after=11)]) == 0


@pytest.mark.parametrize(
    ("first", "second", "alerts"),
    [
        # 23:59:59 and 00:00:01 Beijing time are two quota days: two 80 % alerts.
        (
            dt.datetime(2026, 3, 10, 23, 59, 59, tzinfo=BEIJING),
            dt.datetime(2026, 3, 11, 0, 0, 1, tzinfo=BEIJING),
            2,
        ),
        # 23:59:59 UTC and 00:00:01 UTC are the same Beijing day (08:00): one alert.
        (
            dt.datetime(2026, 3, 10, 23, 59, 59, tzinfo=dt.UTC),
            dt.datetime(2026, 3, 11, 0, 0, 1, tzinfo=dt.UTC),
            1,
        ),
    ],
)
def test_it_alerts_once_per_beijing_quota_day(
    alice, first, second, alerts, django_capture_on_commit_callbacks
):
    for when in (first, second):
        with (
            time_machine.travel(when, tick=False),
            django_capture_on_commit_callbacks(execute=True),
        ):
            alert_crossings_record(charges=[_charge(alice, before=700, after=810)])
    assert Alert.objects.count() == alerts
    assert len(mail.outbox) == alerts


def test_the_banner_shows_todays_crossings_only(alice, alice_client):
    late = dt.datetime(2026, 3, 10, 23, 59, 59, tzinfo=BEIJING)
    with time_machine.travel(late, tick=False):
        alert_crossings_record(charges=[_charge(alice, before=700, after=810)])
        assert "You crossed 80%" in alice_client.get("/usage/").content.decode()
    with time_machine.travel(late + dt.timedelta(seconds=2), tick=False):
        assert "You crossed 80%" not in alice_client.get("/usage/").content.decode()


def test_a_broker_outage_leaves_the_alert_for_the_sweep(
    alice, monkeypatch, django_capture_on_commit_callbacks
):
    from alerts import services

    def broker_down(*args):
        raise ConnectionError("broker down")

    monkeypatch.setattr(services.alert_deliver, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        assert alert_crossings_record(charges=[_charge(alice, before=700, after=810)]) == 1
    assert Alert.objects.get().pending
    assert mail.outbox == []
