"""``/accounts/``: allauth's pages, with our code-entry view and without the pages that do
not fit code-only accounts (separate code request, email list, phone change, password
change): the sign-in page and the Account page cover those."""

from allauth.account import views as allauth_views
from django.urls import include, path
from django.views.generic import RedirectView

from accounts import views
from accounts.delivery import equal_time

_to_account_page = RedirectView.as_view(pattern_name="account", permanent=False)
# The sign-in page itself asks for a code; allauth's separate "send me a code" page would be
# a second, region-less way in.
_to_sign_in = RedirectView.as_view(pattern_name="account_login", permanent=False, query_string=True)

urlpatterns = [
    # allauth's own views, made to take the same time for known and unknown addresses.
    path("login/", equal_time(allauth_views.login), name="account_login"),
    path("signup/", equal_time(allauth_views.signup), name="account_signup"),
    path("login/code/", _to_sign_in, name="account_request_login_code"),
    path("login/code/confirm/", views.confirm_login_code, name="account_confirm_login_code"),
    path("email/", _to_account_page, name="account_email"),
    path("phone/change/", _to_account_page, name="account_change_phone"),
    path("password/change/", _to_account_page, name="account_change_password"),
    path("password/set/", _to_account_page, name="account_set_password"),
    path("", include("allauth.urls")),
]
