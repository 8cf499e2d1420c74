"""``/api/v1/usage/…`` and ``/api/v1/quota-applications/``: the Usage page as REST.

Session authentication like the rest of the portal API. Everything is the caller's own:
another account's application is a 404, like a missing one.
"""

import datetime as dt

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.serializers import ValidationError, as_serializer_error
from rest_framework.views import APIView

from usage import selectors, services
from usage.api.serializers import (
    DailyQuerySerializer,
    DailySerializer,
    QuotaApplicationSerializer,
    TodaySerializer,
    UsageRecordSerializer,
)
from usage.models import QuotaApplication

TAG_USAGE = "Usage"
TAG_APPLICATIONS = "Quota applications"
DEFAULT_DAILY_RANGE_DAYS = 30


class TodayView(APIView):
    @extend_schema(
        operation_id="usage_today",
        summary="Today's usage and quota",
        responses={200: TodaySerializer},
        tags=[TAG_USAGE],
    )
    def get(self, request):
        return Response(TodaySerializer(selectors.usage_today(user=request.user)).data)


class DailyView(APIView):
    @extend_schema(
        operation_id="usage_daily",
        summary="Tokens and requests per day",
        description=(
            "Totals per quota day from `from` to `to` (inclusive, default: the last "
            f"{DEFAULT_DAILY_RANGE_DAYS} days), optionally for one key name or one model. "
            f"At most {selectors.MAX_RANGE_DAYS} days per call."
        ),
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATE, description="First day (YYYY-MM-DD)."),
            OpenApiParameter("to", OpenApiTypes.DATE, description="Last day (YYYY-MM-DD)."),
            OpenApiParameter("key", OpenApiTypes.STR, description="Only this key name."),
            OpenApiParameter("model", OpenApiTypes.STR, description="Only this model."),
        ],
        responses={200: DailySerializer, 400: OpenApiResponse(description="Bad range.")},
        tags=[TAG_USAGE],
    )
    def get(self, request):
        query = DailyQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        default_start, default_end = selectors.last_days(DEFAULT_DAILY_RANGE_DAYS)
        end = params.get("end") or default_end
        start = params.get("start") or min(default_start, end)
        if end < start:
            raise ValidationError({"to": ["`to` is before `from`."]})
        if (end - start) >= dt.timedelta(days=selectors.MAX_RANGE_DAYS):
            raise ValidationError(
                {"from": [f"Ask for at most {selectors.MAX_RANGE_DAYS} days at a time."]}
            )
        key, model = params.get("key", ""), params.get("model", "")
        days = selectors.usage_daily_series(
            user=request.user, start=start, end=end, key_name=key, model=model
        )
        return Response(
            DailySerializer(
                {"start": start, "end": end, "key": key, "model": model, "days": days}
            ).data
        )


class RecordCursorPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def decode_cursor(self, request):
        # A forged or stale cursor starts again from the newest page, as the Usage page does,
        # instead of DRF's 404 (which the schema does not promise, and no id was missing).
        try:
            return super().decode_cursor(request)
        except NotFound:
            return None

    def paginate_queryset(self, queryset, request, view=None):
        """The page looked for in the newest day, then 8 days, then back to where the rollups
        count a page of matching requests, before the whole history (as the Usage page does,
        ``selectors.record_window_starts``): bounded in time, a query reads only those days'
        partitions on PostgreSQL. Exact: a window that holds more rows than the
        page holds the same page and the same next cursor as the whole history would."""
        cursor = self.decode_cursor(request)
        if cursor is not None and cursor.reverse:
            return super().paginate_queryset(queryset, request, view)
        until = timezone.now()
        if cursor is not None and cursor.position is not None:
            try:
                until = dt.datetime.fromisoformat(cursor.position)
            except ValueError:
                return super().paginate_queryset(queryset, request, view)
        activity = getattr(view, "activity", None)
        for start in selectors.record_window_starts(
            until=until,
            count=(self.get_page_size(request) or self.page_size) + 1,
            activity=activity,
        ):
            page = super().paginate_queryset(queryset.filter(created_at__gte=start), request, view)
            if self.has_next:
                return page
        return super().paginate_queryset(queryset, request, view)


class RequestsView(generics.ListAPIView):
    serializer_class = UsageRecordSerializer
    pagination_class = RecordCursorPagination

    def get_queryset(self):
        params = self.request.query_params
        matching = {
            "key_name": params.get("key", "")[:64],
            "model": params.get("model", "")[:128],
            "status": params.get("status", "")[:8],
        }
        user = self.request.user
        # For the paginator: the rollups' count of these requests per day, if it needs them.
        self.activity = lambda: selectors.usage_activity(user=user, **matching)
        return selectors.usage_records(user=user, **matching)

    @extend_schema(
        operation_id="usage_requests",
        summary="Recent requests, newest first",
        description="One entry per request (kept for USAGE_RETENTION_DAYS), cursor-paginated.",
        parameters=[
            OpenApiParameter("key", OpenApiTypes.STR, description="Only this key name."),
            OpenApiParameter("model", OpenApiTypes.STR, description="Only this model."),
            OpenApiParameter(
                "status",
                OpenApiTypes.STR,
                description="`ok` (status < 400), `error` (>= 400) or an exact HTTP status.",
            ),
        ],
        tags=[TAG_USAGE],
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class QuotaApplicationListView(APIView):
    @extend_schema(
        operation_id="quota_applications_list",
        summary="Your quota applications, newest first",
        responses={200: QuotaApplicationSerializer(many=True)},
        tags=[TAG_APPLICATIONS],
    )
    def get(self, request):
        rows = selectors.quota_applications_of(user=request.user)
        return Response(QuotaApplicationSerializer(rows, many=True).data)

    @extend_schema(
        operation_id="quota_applications_create",
        summary="Apply for a larger daily quota",
        description="At most one application may wait for review per account.",
        request=QuotaApplicationSerializer,
        responses={
            201: QuotaApplicationSerializer,
            400: OpenApiResponse(description="Invalid fields, or one is already pending."),
        },
        tags=[TAG_APPLICATIONS],
    )
    def post(self, request):
        serializer = QuotaApplicationSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            application = services.quota_application_create(
                user=request.user, **serializer.validated_data
            )
        except DjangoValidationError as error:
            raise ValidationError(as_serializer_error(error)) from None
        return Response(
            QuotaApplicationSerializer(application).data, status=status.HTTP_201_CREATED
        )


class QuotaApplicationDetailView(APIView):
    @extend_schema(
        operation_id="quota_applications_retrieve",
        summary="One of your quota applications",
        responses={
            200: QuotaApplicationSerializer,
            404: OpenApiResponse(description="No such application among yours."),
        },
        tags=[TAG_APPLICATIONS],
    )
    def get(self, request, public_id):
        application = get_object_or_404(QuotaApplication, user=request.user, public_id=public_id)
        return Response(QuotaApplicationSerializer(application).data)
