from django.urls import path

from accounts import views
from accounts.delivery import equal_time

urlpatterns = [
    path("", views.account, name="account"),
    path("language/", views.language_set, name="account_language"),
    path("add/<str:kind>/", equal_time(views.identifier_add), name="account_identifier_add"),
    path("confirm/", views.identifier_confirm, name="account_identifier_confirm"),
    path("delete/", views.account_delete, name="account_delete"),
]
