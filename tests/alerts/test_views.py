import pytest
from django.core.cache import cache
from django.urls import reverse

from alerts import views as alert_views
from alerts.models import AlertSettings
from alerts.services import alert_settings_update, webhook_secret_of
from alerts.webhooks import WebhookRefused

VIEWS = [
    ("alerts:settings", "get"),
    ("alerts:settings", "post"),
    ("alerts:secret", "post"),
    ("alerts:test", "post"),
]


@pytest.fixture(autouse=True)
def _no_recent_test_webhook(db, alice):
    # Account ids repeat between tests; the cache outlives each test's database.
    cache.delete(alert_views.webhook_test_cache_key(alice))


@pytest.mark.parametrize(("name", "method"), VIEWS)
def test_it_sends_anonymous_visitors_to_login(client, db, name, method):
    response = getattr(client, method)(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not AlertSettings.objects.exists()


@pytest.mark.parametrize("name", ["alerts:secret", "alerts:test"])
def test_it_refuses_get_on_actions(alice_client, name):
    assert alice_client.get(reverse(name)).status_code == 405


def test_it_needs_the_csrf_token(alice, db):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(reverse("alerts:secret")).status_code == 403
    assert not AlertSettings.objects.exists()


def test_the_usage_page_shows_the_default_settings(alice_client):
    page = alice_client.get("/usage/").content.decode()
    assert 'id="alerts"' in page
    assert 'value="80, 100"' in page
    form = page[page.index('action="/usage/alerts/"') :]
    token = form.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    assert len(token) >= 32


def test_it_saves_thresholds_and_a_webhook(alice_client, alice):
    response = alice_client.post(
        reverse("alerts:settings"),
        {"thresholds": "90, 50 ,50%", "key_thresholds": "", "webhook_url": "https://h.example/x"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/usage/#alerts"
    row = AlertSettings.objects.get(user=alice)
    assert (row.thresholds, row.key_thresholds, row.webhook_url) == (
        [50, 90],
        [],
        "https://h.example/x",
    )
    secret = webhook_secret_of(row)
    assert secret.startswith("whsec_")
    assert secret not in row.webhook_secret_encrypted
    assert secret in alice_client.get("/usage/").content.decode()


def test_it_switches_alerts_off_with_an_empty_list(alice_client, alice):
    alice_client.post(reverse("alerts:settings"), {"thresholds": "", "key_thresholds": ""})
    assert AlertSettings.objects.get(user=alice).thresholds == []


@pytest.mark.parametrize(
    "data",
    [
        {"thresholds": "0"},
        {"thresholds": "101"},
        {"thresholds": "eighty"},
        {"thresholds": "10,20,30,40,50,60"},
        {"thresholds": "80", "webhook_url": "http://h.example/x"},
        {"thresholds": "80", "webhook_url": "https://user:pw@h.example/x"},
    ],
)
def test_it_refuses_bad_settings(alice_client, alice, data):
    response = alice_client.post(reverse("alerts:settings"), data)
    assert response.status_code == 400
    assert 'class="errorlist' in response.content.decode()
    assert not AlertSettings.objects.filter(user=alice).exists()


def test_it_regenerates_the_secret(alice_client, alice):
    row = alert_settings_update(
        user=alice, thresholds=[80], key_thresholds=[], webhook_url="https://h.example/x"
    )
    old = webhook_secret_of(row)
    assert alice_client.post(reverse("alerts:secret")).status_code == 302
    new = webhook_secret_of(AlertSettings.objects.get(user=alice))
    assert new != old and new.startswith("whsec_")


def test_it_changes_only_the_signed_in_accounts_settings(alice_client, alice, charlie):
    row = alert_settings_update(
        user=charlie, thresholds=[80], key_thresholds=[], webhook_url="https://c.example/x"
    )
    charlie_secret = webhook_secret_of(row)
    alice_client.post(reverse("alerts:settings"), {"thresholds": "10"})
    alice_client.post(reverse("alerts:secret"))
    row.refresh_from_db()
    assert (row.thresholds, webhook_secret_of(row)) == ([80], charlie_secret)
    assert charlie_secret not in alice_client.get("/usage/").content.decode()


def test_the_test_webhook_goes_through_the_guard(alice_client, alice, resolve_to, settings):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    resolve_to["internal.example"] = "10.0.0.7"
    alert_settings_update(
        user=alice, thresholds=[80], key_thresholds=[], webhook_url="https://internal.example/x"
    )
    response = alice_client.post(reverse("alerts:test"), follow=True)
    assert "not a public address" in response.content.decode()


@pytest.mark.parametrize("port", ["65536", "99999", "0"])
def test_it_refuses_a_webhook_port_that_is_not_one(alice_client, alice, port):
    response = alice_client.post(
        reverse("alerts:settings"),
        {"thresholds": "80", "webhook_url": f"https://h.example:{port}/x"},
    )
    assert response.status_code == 400
    assert "The port must be a number from 1 to 65535." in response.content.decode()
    assert not AlertSettings.objects.filter(user=alice).exists()


def test_the_test_webhook_refuses_a_saved_url_with_a_bad_port(alice_client, alice):
    """A URL saved before the form checked ports: refused, not a 500."""
    row = alert_settings_update(
        user=alice, thresholds=[80], key_thresholds=[], webhook_url="https://h.example/x"
    )
    AlertSettings.objects.filter(pk=row.pk).update(webhook_url="https://h.example:99999/x")
    response = alice_client.post(reverse("alerts:test"), follow=True)
    assert response.status_code == 200
    assert "its port is not a number from 1 to 65535" in response.content.decode()


def test_the_test_webhook_is_rate_limited(alice_client, alice, monkeypatch):
    sent = []

    def fake_post(**kwargs):
        sent.append(kwargs)
        raise WebhookRefused("x")

    monkeypatch.setattr(alert_views, "webhook_post", fake_post)
    alert_settings_update(
        user=alice, thresholds=[80], key_thresholds=[], webhook_url="https://h.example/x"
    )
    alice_client.post(reverse("alerts:test"))
    response = alice_client.post(reverse("alerts:test"), follow=True)
    assert len(sent) == 1
    assert "Wait a few seconds" in response.content.decode()


def test_the_form_on_the_usage_page_posts_with_its_csrf_token(alice, db):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    page = client.get("/usage/").content.decode()
    form = page[page.index('action="/usage/alerts/"') :]
    token = form.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    response = client.post(
        reverse("alerts:settings"), {"thresholds": "90", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    assert AlertSettings.objects.get(user=alice).thresholds == [90]


@pytest.fixture
def secret_under_a_lost_key(alice, settings):
    """Alice's webhook secret stored under a KEY_ENCRYPTION_KEY the platform no longer has."""
    from cryptography.fernet import Fernet

    settings.KEY_ENCRYPTION_KEY = Fernet.generate_key().decode()
    alert_settings_update(
        user=alice, thresholds=[80], key_thresholds=[], webhook_url="https://h.example/x"
    )
    settings.KEY_ENCRYPTION_KEY = Fernet.generate_key().decode()
    settings.KEY_ENCRYPTION_OLD_KEYS = []


def test_the_usage_page_asks_for_a_new_secret_it_cannot_read(alice_client, secret_under_a_lost_key):
    response = alice_client.get("/usage/")
    assert response.status_code == 200
    assert "data-webhook-secret-lost" in response.content.decode()
    response = alice_client.get(reverse("alerts:settings"))
    assert response.status_code == 200
    assert "data-webhook-secret-lost" in response.content.decode()


def test_the_test_webhook_asks_for_a_new_secret_it_cannot_read(
    alice_client, secret_under_a_lost_key, monkeypatch
):
    monkeypatch.setattr(alert_views, "webhook_post", lambda **kwargs: pytest.fail("posted"))
    response = alice_client.post(reverse("alerts:test"), follow=True)
    assert "Make a new secret first" in response.content.decode()


def test_a_new_secret_replaces_one_it_cannot_read(alice_client, alice, secret_under_a_lost_key):
    alice_client.post(reverse("alerts:secret"))
    row = AlertSettings.objects.get(user=alice)
    assert webhook_secret_of(row).startswith("whsec_")
    assert "data-webhook-secret-lost" not in alice_client.get("/usage/").content.decode()
