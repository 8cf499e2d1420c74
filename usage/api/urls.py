from django.urls import path

from usage.api import views

# Mounted at /api/v1/ by portal.urls.
urlpatterns = [
    path("usage/today/", views.TodayView.as_view(), name="api-usage-today"),
    path("usage/daily/", views.DailyView.as_view(), name="api-usage-daily"),
    path("usage/requests/", views.RequestsView.as_view(), name="api-usage-requests"),
    path(
        "quota-applications/",
        views.QuotaApplicationListView.as_view(),
        name="api-quota-applications",
    ),
    path(
        "quota-applications/<uuid:public_id>/",
        views.QuotaApplicationDetailView.as_view(),
        name="api-quota-application",
    ),
]
