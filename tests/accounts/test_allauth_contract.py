"""The allauth internals accounts/ relies on, pinned: an upgrade that changes one fails here.

allauth offers no public API for these, so pyproject pins django-allauth to one exact version
and each test below names what to re-check when it fails. Everything else goes through the
adapter and allauth's public modules (``allauth.account.utils``, ``allauth.account.stages``,
``allauth.account.views``' documented views, Django's ``login_not_required``).

  * ``allauth.account.internal.flows.login_by_code.LoginCodeVerificationProcess`` - the
    sign-in code flow: accounts/forms.py (a known address at sign-up gets a sign-in code) and
    accounts/views.py (ConfirmLoginCodeView counts attempts in the database).
  * ``allauth.account.internal.flows.login.get_authentication_records`` - when the signed-in
    account last proved itself: accounts/adapter.py (is_reauthentication_required).
  * ``allauth.account.views.ConfirmLoginCodeView``'s private hooks (``_action``,
    ``_resend_form_valid``, ``self._process``, ``self.stage``) that accounts/views.py overrides.
  * Tests only: ``allauth.mfa.totp.internal.auth`` (tests/accounts/test_admin_security.py).
"""

import inspect
import re
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from allauth.account import views as allauth_views
from allauth.account.stages import LoginByCodeStage, LoginStageController
from django.test import RequestFactory
from django.urls import reverse
from django.utils.functional import cached_property

from accounts.models import Region
from tests.accounts.conftest import last_mail_code

pytestmark = pytest.mark.django_db

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
LOGIN = reverse("account_login")
CONFIRM = reverse("account_confirm_login_code")


def recheck(what: str) -> str:
    return (
        f"django-allauth {version('django-allauth')} changed {what}. Re-check the code named in "
        f"this module's docstring against the new release, then update this test and the pin."
    )


def test_allauth_is_exactly_the_pinned_version():
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    [pin] = [d for d in deps if d.startswith("django-allauth")]
    assert re.fullmatch(r"django-allauth==[\w.]+", pin), (
        f"pyproject must pin django-allauth exactly (accounts/ uses its internals), not {pin!r}"
    )
    assert version("django-allauth") == pin.split("==")[1], (
        f"installed django-allauth {version('django-allauth')} is not the pinned {pin}: run "
        "`make install-dev`, or re-check this module's internals before moving the pin"
    )


# --- LoginCodeVerificationProcess ----------------------------------------------------------
def _process_class():
    try:
        from allauth.account.internal.flows.login_by_code import LoginCodeVerificationProcess
    except ImportError as error:
        pytest.fail(recheck(f"where LoginCodeVerificationProcess lives ({error})"))
    return LoginCodeVerificationProcess


def test_the_login_code_process_has_what_we_call():
    process = _process_class()
    params = inspect.signature(process.initiate).parameters
    assert {"request", "user", "email", "phone"} <= set(params), recheck(
        f"LoginCodeVerificationProcess.initiate's parameters (now {list(params)})"
    )
    assert list(inspect.signature(process.resume).parameters) == ["stage"], recheck(
        "LoginCodeVerificationProcess.resume(stage)"
    )
    for name in ("abort", "record_invalid_attempt", "resend"):
        assert callable(getattr(process, name, None)), recheck(
            f"LoginCodeVerificationProcess.{name}"
        )
    for name in ("code", "user", "can_resend"):
        assert isinstance(inspect.getattr_static(process, name, None), property), recheck(
            f"LoginCodeVerificationProcess.{name} (a property)"
        )


def _pending_process(client, alice, mailoutbox):
    """Ask for a sign-in code through the real page; resume allauth's process from the session."""
    response = client.post(LOGIN, {"region": Region.OTHER, "login": alice.email})
    assert response.status_code == 302 and response["Location"] == CONFIRM
    request = RequestFactory().get(CONFIRM)
    request.session = client.session
    request.user = alice
    stage = LoginStageController.enter(request, LoginByCodeStage.key)
    assert stage, recheck("LoginStageController.enter / LoginByCodeStage for a pending code")
    process = _process_class().resume(stage)
    assert process, recheck("LoginCodeVerificationProcess.resume on a fresh code")
    return process, last_mail_code(mailoutbox)


def test_the_login_code_process_keeps_the_state_we_read(client, alice, mailoutbox):
    process, mailed = _pending_process(client, alice, mailoutbox)

    assert process.code == mailed, recheck("LoginCodeVerificationProcess.code")
    assert process.user == alice, recheck("LoginCodeVerificationProcess.user")
    state = process.state
    # accounts/views.py keys its database attempt counter on these.
    assert str(state.get("user_id")) == str(alice.pk), recheck('state["user_id"]')
    assert isinstance(state.get("at"), int | float) and abs(state["at"] - time.time()) < 60, (
        recheck('state["at"] (the time the code was issued)')
    )
    assert state.get("email") == alice.email, recheck('state["email"]')
    assert "phone" in state or state.get("email"), recheck('state["phone"] / state["email"]')
    assert state.get("failed_attempts") == 0, recheck('state["failed_attempts"]')
    assert "initiated_by_user" in state, recheck('state["initiated_by_user"]')


def test_the_login_code_process_counts_and_aborts(client, alice, mailoutbox, settings):
    process, _mailed = _pending_process(client, alice, mailoutbox)

    assert process.record_invalid_attempt() is True, recheck(
        "record_invalid_attempt() returning True while attempts are left"
    )
    assert process.state["failed_attempts"] == 1, recheck("the failed_attempts count")
    process.abort()
    assert process.stage.state.get("login_code") is None or not _process_class().resume(
        process.stage
    ), recheck("abort() ending the code")


# --- get_authentication_records -------------------------------------------------------------
def test_authentication_records_say_when_a_code_sign_in_happened(client, alice, mailoutbox):
    try:
        from allauth.account.internal.flows.login import get_authentication_records
    except ImportError as error:
        pytest.fail(recheck(f"where get_authentication_records lives ({error})"))
    assert list(inspect.signature(get_authentication_records).parameters) == [
        "request",
        "user",
    ], recheck("get_authentication_records(request, user)")

    client.post(LOGIN, {"region": Region.OTHER, "login": alice.email})
    before = time.time()
    assert client.post(CONFIRM, {"code": last_mail_code(mailoutbox)}).status_code == 302
    request = RequestFactory().get("/")
    request.session = client.session
    records = get_authentication_records(request, alice)

    assert records and isinstance(records[-1], dict), recheck(
        "get_authentication_records after a sign-in (a list of dicts)"
    )
    assert before - 1 <= records[-1]["at"] <= time.time() + 1, recheck('a record\'s "at" time')


# --- ConfirmLoginCodeView's private hooks ---------------------------------------------------
def test_the_confirm_code_view_has_the_hooks_we_override():
    view = allauth_views.ConfirmLoginCodeView
    action = inspect.getattr_static(view, "_action", None)
    assert isinstance(action, property | cached_property), recheck(
        "ConfirmLoginCodeView._action (a property: 'verify' or 'resend')"
    )
    for name in ("_resend_form_valid", "form_invalid", "passthrough_next_url", "dispatch"):
        assert callable(getattr(view, name, None)), recheck(f"ConfirmLoginCodeView.{name}")
    dispatch = inspect.getsource(view.dispatch)
    # accounts/views.py skips allauth's dispatch and sets these itself, the same way.
    for needle in ("self.stage", "self._process", "LoginCodeVerificationProcess.resume"):
        assert needle in dispatch, recheck(f"ConfirmLoginCodeView.dispatch setting {needle}")
    form_invalid = inspect.getsource(view.form_invalid)
    assert "record_invalid_attempt" in form_invalid, recheck(
        "ConfirmLoginCodeView.form_invalid counting attempts"
    )


def test_the_totp_helpers_the_tests_use_are_there():
    try:
        from allauth.mfa.totp.internal import auth
    except ImportError as error:
        pytest.fail(recheck(f"allauth.mfa.totp.internal.auth ({error})"))
    for name in (
        "SECRET_SESSION_KEY",
        "format_hotp_value",
        "hotp_value",
        "yield_hotp_counters_from_time",
    ):
        assert hasattr(auth, name), recheck(f"allauth.mfa.totp.internal.auth.{name}")
    for name in ("format_hotp_value", "hotp_value"):
        assert callable(getattr(auth, name, None)), recheck(
            f"allauth.mfa.totp.internal.auth.{name}"
        )
