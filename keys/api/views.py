"""``/api/v1/keys/``: the API Keys page as a REST resource (browser session + CSRF).

Keys are addressed by their public UUID. A stranger's key is a 404, like a missing one.
Only create, regenerate and reveal answer with the secret, and those answers are ``no-store``.
"""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.utils.cache import add_never_cache_headers, patch_cache_control
from django.views.decorators.debug import sensitive_variables
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.serializers import ValidationError, as_serializer_error

from keys import selectors, services
from keys.api.serializers import (
    ApiKeyChangeSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    ApiKeyUpdateSerializer,
    ApiKeyWithSecretSerializer,
)

TAG = "API keys"
_NOT_FOUND = OpenApiResponse(description="No key with this id among yours.")
_INVALID = OpenApiResponse(
    description="Invalid name or limits (the field is named), or the account's key limit is "
    "reached."
)


def _secret_response(key, secret, status_code=status.HTTP_200_OK) -> Response:
    data = ApiKeyWithSecretSerializer(key, context={"secret": secret}).data
    response = Response(data, status=status_code)
    add_never_cache_headers(response)
    patch_cache_control(response, no_store=True, private=True)
    return response


def _service_call(fn, **kwargs):
    try:
        return fn(**kwargs)
    except DjangoValidationError as error:
        raise ValidationError(as_serializer_error(error)) from None


@extend_schema_view(
    list=extend_schema(
        operation_id="api_keys_list",
        summary="List your API keys",
        description="Every key of the signed-in account, oldest first. Secrets are masked.",
        tags=[TAG],
    ),
    retrieve=extend_schema(
        operation_id="api_keys_retrieve",
        summary="One API key",
        responses={200: ApiKeySerializer, 404: _NOT_FOUND},
        tags=[TAG],
    ),
)
class ApiKeyViewSet(viewsets.GenericViewSet):
    serializer_class = ApiKeySerializer
    lookup_field = "public_id"
    lookup_value_converter = "uuid"
    pagination_class = None  # at most MAX_KEYS_PER_ACCOUNT rows

    def get_queryset(self):
        return selectors.api_keys_for_user(self.request.user)

    def get_object(self):
        return selectors.api_key_get_for_user(self.request.user, self.kwargs["public_id"])

    def list(self, request):
        return Response(ApiKeySerializer(self.get_queryset(), many=True).data)

    def retrieve(self, request, public_id=None):
        return Response(ApiKeySerializer(self.get_object()).data)

    @extend_schema(
        operation_id="api_keys_create",
        summary="Create an API key",
        description="Answers with the new key's secret in `key`. It can be revealed again later. "
        "Limits (daily cap, models, expiry, IP allow-list, concurrency) are optional.",
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyWithSecretSerializer, 400: _INVALID},
        tags=[TAG],
    )
    @sensitive_variables()
    def create(self, request):
        serializer = ApiKeyCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        key, secret = _service_call(
            services.api_key_create,
            user=request.user,
            name=data.pop("name"),
            key_controls=data,
        )
        return _secret_response(key, secret, status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="api_keys_update",
        summary="Rename, enable or disable an API key, or change its limits",
        description="Every change of a limit is recorded (see `changes`) and applies to the "
        "key's next request.",
        request=ApiKeyUpdateSerializer,
        responses={200: ApiKeySerializer, 400: _INVALID, 404: _NOT_FOUND},
        tags=[TAG],
    )
    def update(self, request, public_id=None):
        return self._update(request, partial=False)

    @extend_schema(
        operation_id="api_keys_partial_update",
        summary="Change some fields of an API key (name, status, limits)",
        request=ApiKeyUpdateSerializer(partial=True),
        responses={200: ApiKeySerializer, 400: _INVALID, 404: _NOT_FOUND},
        tags=[TAG],
    )
    def partial_update(self, request, public_id=None):
        return self._update(request, partial=True)

    def _update(self, request, *, partial):
        key = self.get_object()
        serializer = ApiKeyUpdateSerializer(data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        controls = {field: data[field] for field in services.CONTROL_FIELDS if field in data}
        with transaction.atomic():
            if "name" in data:
                _service_call(services.api_key_rename, api_key=key, name=data["name"])
            if "is_active" in data:
                services.api_key_set_active(api_key=key, is_active=data["is_active"])
            if controls:
                _service_call(services.api_key_set_controls, api_key=key, **controls)
        return Response(ApiKeySerializer(key).data)

    @extend_schema(
        operation_id="api_keys_changes",
        summary="The history of an API key's limits",
        description="Newest first (at most 100): when, by whom, and the values before and after.",
        responses={200: ApiKeyChangeSerializer(many=True), 404: _NOT_FOUND},
        tags=[TAG],
    )
    @action(detail=True, methods=["get"])
    def changes(self, request, public_id=None):
        changes = selectors.api_key_changes_for_key(self.get_object())[:100]
        return Response(ApiKeyChangeSerializer(changes, many=True).data)

    @extend_schema(
        operation_id="api_keys_destroy",
        summary="Delete an API key",
        responses={204: None, 404: _NOT_FOUND},
        tags=[TAG],
    )
    def destroy(self, request, public_id=None):
        services.api_key_delete(api_key=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="api_keys_regenerate",
        summary="Give an API key a new secret",
        description="Same id and name, new secret (in `key`); the old secret stops working now.",
        request=None,
        responses={200: ApiKeyWithSecretSerializer, 404: _NOT_FOUND},
        tags=[TAG],
    )
    @action(detail=True, methods=["post"])
    @sensitive_variables()
    def regenerate(self, request, public_id=None):
        key, secret = services.api_key_regenerate(api_key=self.get_object())
        return _secret_response(key, secret)

    @extend_schema(
        operation_id="api_keys_reveal",
        summary="Show an API key's secret",
        description="The secret of one of your keys, in `key`.",
        request=None,
        responses={200: ApiKeyWithSecretSerializer, 404: _NOT_FOUND},
        tags=[TAG],
    )
    @action(detail=True, methods=["post"])
    @sensitive_variables()
    def reveal(self, request, public_id=None):
        key = self.get_object()
        return _secret_response(key, services.api_key_reveal(api_key=key))
