from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from observability import metrics
from portal import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.auth_urls")),
    path("account/", include("accounts.urls")),
    path("docs/", include("docs.urls")),
    path("keys/", include("keys.urls")),
    path("api/v1/keys/", include("keys.api.urls")),
    path("usage/alerts/", include("alerts.urls")),
    path("usage/", include("usage.urls")),
    path("playground/", include("playground.urls")),
    path("review/", include("staff.review_urls")),
    path("staff/", include("staff.urls")),
    path("api/v1/", include("usage.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file: the CSP forbids inline scripts.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
]
