"""``/accounts/``: allauth's pages, with our code-entry view and without the pages that do
not fit code-only accounts (email list, phone change, password change): the Account page
covers those."""

from django.urls import include, path
from django.views.generic import RedirectView

from accounts import views

_to_account_page = RedirectView.as_view(pattern_name="account", permanent=False)

urlpatterns = [
    path("login/code/confirm/", views.confirm_login_code, name="account_confirm_login_code"),
    path("email/", _to_account_page, name="account_email"),
    path("phone/change/", _to_account_page, name="account_change_phone"),
    path("password/change/", _to_account_page, name="account_change_password"),
    path("password/set/", _to_account_page, name="account_set_password"),
    path("", include("allauth.urls")),
]
