"""The API Keys pages. Plain forms and POST/redirect/GET; portal.js only adds reveal and copy.

Every view finds the key through ``api_key_get_for_user``: another account's key is a 404.
Responses that may carry a secret are marked ``no-store``.
"""

import datetime as dt
import logging
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers, patch_cache_control
from django.utils.timesince import timeuntil
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_http_methods, require_POST

from keys import crypto, selectors, services
from keys.forms import ApiKeyControlsForm, ApiKeyNameForm, ApiKeyStatusForm

logger = logging.getLogger(__name__)

# The session remembers only *which* key was just made or regenerated, never its secret:
# the list page decrypts it once and forgets the marker.
FRESH_KEY_SESSION_KEY = "keys:fresh"
# The list warns about keys that expire within this.
EXPIRY_SOON = dt.timedelta(days=7)


def public_base_url(request) -> str:
    """The base URL clients should use: ``PUBLIC_BASE_URL`` or this request's origin."""
    return settings.PUBLIC_BASE_URL or request.build_absolute_uri("/").rstrip("/")


def _no_store(response):
    add_never_cache_headers(response)
    patch_cache_control(response, no_store=True, private=True)
    return response


def _add_service_errors(form, error: ValidationError) -> None:
    # A dict names the field ("name"); a plain message is about the whole form (the limit).
    form.add_error(None, error)


def _zone() -> ZoneInfo:
    # Expiry times are entered and shown in the quota time zone, the clock of the platform's
    # days (``usage.quota`` reads the same setting; keys does not import usage).
    return ZoneInfo(settings.QUOTA_TIMEZONE)


def _shown(value, zone) -> str:
    """A control's value from the change history, for people: "—" for none."""
    if value in (None, "", []):
        return "—"
    if isinstance(value, list):
        return ", ".join(value)
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
        return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")
    return f"{value:,}" if isinstance(value, int) else str(value)


def _change_rows(changes, form, zone) -> list[dict]:
    rows = []
    for change in changes:
        fields = [
            {
                "label": form.fields[name].label if name in form.fields else name,
                "before": _shown(change.before.get(name), zone),
                "after": _shown(value, zone),
            }
            for name, value in change.after.items()
        ]
        rows.append({"change": change, "fields": fields})
    return rows


def _expiry(key, now):
    """(state, text) for the list: "expired", "soon" (within 7 days) or "later"."""
    if key.expires_at is None:
        return None, ""
    if key.expires_at <= now:
        return "expired", ""
    state = "soon" if key.expires_at - now <= EXPIRY_SOON else "later"
    return state, timeuntil(key.expires_at, now, depth=1)


@sensitive_variables()
@login_required
@require_http_methods(["GET", "POST"])
def key_list(request):
    data = request.POST if request.method == "POST" else None
    form = ApiKeyNameForm(data)
    controls_form = ApiKeyControlsForm(data, zone=_zone())
    if request.method == "POST" and form.is_valid() and controls_form.is_valid():
        try:
            key, _secret = services.api_key_create(
                user=request.user,
                name=form.cleaned_data["name"],
                key_controls=controls_form.controls(),
            )
        except ValidationError as error:
            if hasattr(error, "error_dict") and "name" not in error.error_dict:
                _add_service_errors(controls_form, error)
            else:
                _add_service_errors(form, error)
        else:
            request.session[FRESH_KEY_SESSION_KEY] = str(key.public_id)
            messages.success(request, _("Key “%(name)s” created.") % {"name": key.name})
            return redirect("keys:list")

    keys = list(selectors.api_keys_for_user(request.user))
    now = timezone.now()
    for key in keys:
        key.expiry_state, key.expiry_left = _expiry(key, now)
    fresh_key, fresh_secret = _pop_fresh_key(request, keys)
    context = {
        "keys": keys,
        "form": form,
        "controls_form": controls_form,
        "fresh_key": fresh_key,
        "fresh_secret": fresh_secret,
        "max_keys": settings.MAX_KEYS_PER_ACCOUNT,
        "at_limit": len(keys) >= settings.MAX_KEYS_PER_ACCOUNT,
        "base_url": public_base_url(request),
    }
    status = 400 if form.is_bound else 200
    return _no_store(render(request, "keys/list.html", context, status=status))


@login_required
@require_http_methods(["GET", "POST"])
def key_detail(request, public_id):
    """The key's limits (an edit form) and the history of their changes."""
    key = selectors.api_key_get_for_user(request.user, public_id)
    zone = _zone()
    form = ApiKeyControlsForm.for_key(
        key, zone=zone, data=request.POST if request.method == "POST" else None
    )
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                services.api_key_set_controls(api_key=key, **form.controls())
            except ValidationError as error:
                _add_service_errors(form, error)
            else:
                messages.success(
                    request, _("The limits of “%(name)s” are saved.") % {"name": key.name}
                )
                return redirect("keys:detail", public_id=key.public_id)
        status = 400
    now = timezone.now()
    key.expiry_state, key.expiry_left = _expiry(key, now)
    context = {
        "key": key,
        "form": form,
        "zone": zone,
        "changes": _change_rows(selectors.api_key_changes_for_key(key)[:50], form, zone),
    }
    return render(request, "keys/detail.html", context, status=status)


@sensitive_variables()
def _pop_fresh_key(request, keys):
    public_id = request.session.pop(FRESH_KEY_SESSION_KEY, None)
    if not public_id:
        return None, None
    for key in keys:
        if str(key.public_id) == public_id:
            secret = services.api_key_reveal(api_key=key)
            return key, secret
    return None, None


@login_required
@require_http_methods(["GET", "POST"])
def key_rename(request, public_id):
    key = selectors.api_key_get_for_user(request.user, public_id)
    if request.method == "POST":
        form = ApiKeyNameForm(request.POST)
        if form.is_valid():
            old_name = key.name
            try:
                services.api_key_rename(api_key=key, name=form.cleaned_data["name"])
            except ValidationError as error:
                _add_service_errors(form, error)
            else:
                messages.success(
                    request,
                    _("Key “%(old)s” is now called “%(new)s”.")
                    % {"old": old_name, "new": key.name},
                )
                return redirect("keys:list")
        status = 400
    else:
        form = ApiKeyNameForm(initial={"name": key.name})
        status = 200
    return render(request, "keys/rename.html", {"key": key, "form": form}, status=status)


@login_required
@require_POST
def key_status(request, public_id):
    key = selectors.api_key_get_for_user(request.user, public_id)
    form = ApiKeyStatusForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose whether the key should be enabled or disabled."))
        return redirect("keys:list")
    services.api_key_set_active(api_key=key, is_active=form.cleaned_data["is_active"])
    if key.is_active:
        messages.success(request, _("Key “%(name)s” is enabled.") % {"name": key.name})
    else:
        messages.success(
            request,
            _("Key “%(name)s” is disabled: requests with it are refused until you enable it.")
            % {"name": key.name},
        )
    return redirect("keys:list")


@login_required
@require_http_methods(["GET", "POST"])
def key_regenerate(request, public_id):
    key = selectors.api_key_get_for_user(request.user, public_id)
    if request.method == "POST":
        services.api_key_regenerate(api_key=key)
        request.session[FRESH_KEY_SESSION_KEY] = str(key.public_id)
        messages.success(
            request,
            _("Key “%(name)s” has a new secret. The old one no longer works.") % {"name": key.name},
        )
        return redirect("keys:list")
    return render(request, "keys/regenerate_confirm.html", {"key": key})


@login_required
@require_http_methods(["GET", "POST"])
def key_delete(request, public_id):
    key = selectors.api_key_get_for_user(request.user, public_id)
    if request.method == "POST":
        name = key.name
        services.api_key_delete(api_key=key)
        messages.success(request, _("Key “%(name)s” deleted.") % {"name": name})
        return redirect("keys:list")
    return render(request, "keys/delete_confirm.html", {"key": key})


@sensitive_variables()
@login_required
@require_http_methods(["GET", "POST"])
def key_reveal(request, public_id):
    """GET: a page with a reveal button. POST: the secret (a page, or JSON for portal.js)."""
    key = selectors.api_key_get_for_user(request.user, public_id)
    secret, status, problem = None, 200, ""
    if request.method == "POST":
        try:
            secret = services.api_key_reveal(api_key=key)
        except crypto.UndecryptableSecret:
            # The operator changed KEY_ENCRYPTION_KEY without listing the old one (a check
            # error at start-up says so too). The key still authenticates: only its copy for
            # display is unreadable.
            logger.error(
                "api key %s cannot be revealed: no configured key decrypts it", key.public_id
            )
            status = 503
            problem = _(
                "This key cannot be shown right now because of a server configuration problem. "
                "It still works for API calls. If you no longer have it, regenerate it."
            )
    if _wants_json(request) and request.method == "POST":
        body = {"id": str(key.public_id), "key": secret} if secret else {"error": problem}
        response = JsonResponse(body, status=status)
    else:
        context = {"key": key, "secret": secret, "problem": problem}
        response = render(request, "keys/reveal.html", context, status=status)
    return _no_store(response)


def _wants_json(request) -> bool:
    # Browsers send "text/html,...,*/*" on form posts; only portal.js asks for JSON alone.
    return request.headers.get("Accept", "").split(",")[0].strip() == "application/json"
