from django.urls import path

from staff import views

app_name = "staff"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("accounts/", views.accounts, name="accounts"),
    path("accounts/<uuid:public_id>/", views.account, name="account"),
    path("accounts/<uuid:public_id>/suspend/", views.account_suspend, name="account_suspend"),
    path(
        "accounts/<uuid:public_id>/reactivate/",
        views.account_reactivate,
        name="account_reactivate",
    ),
    path("accounts/<uuid:public_id>/quota/", views.account_quota, name="account_quota"),
    path(
        "accounts/<uuid:public_id>/revoke-keys/",
        views.account_revoke_keys,
        name="account_revoke_keys",
    ),
]
