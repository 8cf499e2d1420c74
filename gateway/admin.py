from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from gateway.models import ENDPOINT_BASE_URL_HELP, Model, ModelAlias, UpstreamEndpoint
from keys.crypto import encrypt_secret


class UpstreamEndpointForm(forms.ModelForm):
    base_url = forms.URLField(
        label=_("base URL"),
        required=False,
        assume_scheme="https",
        help_text=ENDPOINT_BASE_URL_HELP,
    )
    api_key = forms.CharField(
        label=_("upstream API key"),
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=_("Stored encrypted. Leave empty to keep the current key."),
    )
    clear_api_key = forms.BooleanField(label=_("remove the upstream key"), required=False)

    class Meta:
        model = UpstreamEndpoint
        fields = [
            "kind",
            "base_url",
            "upstream_model",
            "responses_api",
            "priority",
            "weight",
            "max_concurrency",
            "enabled",
            "connect_timeout_seconds",
            "first_byte_timeout_seconds",
        ]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("kind") != UpstreamEndpoint.Kind.DEMO and not cleaned.get("base_url"):
            self.add_error("base_url", _("A base URL is required for this kind."))
        return cleaned

    def save(self, commit=True):
        instance = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            instance.api_key_encrypted = ""
        elif self.cleaned_data.get("api_key"):
            instance.api_key_encrypted = encrypt_secret(self.cleaned_data["api_key"])
        if commit:
            instance.save()
        return instance


class UpstreamEndpointInline(admin.StackedInline):
    model = UpstreamEndpoint
    form = UpstreamEndpointForm
    extra = 0
    readonly_fields = ("has_api_key",)

    @admin.display(boolean=True, description=_("upstream key"))
    def has_api_key(self, obj):
        return bool(obj.api_key_encrypted)


class ModelAliasInline(admin.TabularInline):
    model = ModelAlias
    extra = 0


class ModelForm(forms.ModelForm):
    class Meta:
        model = Model
        fields = [
            "name",
            "description",
            "context_window",
            "max_output_tokens",
            "kind",
            "reasoning",
            "token_counter",
            "tokenizer_file",
            "enabled",
            "sort_order",
        ]


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    form = ModelForm
    inlines = (UpstreamEndpointInline, ModelAliasInline)
    list_display = (
        "name",
        "endpoint_count",
        "context_window",
        "max_output_tokens",
        "kind",
        "reasoning",
        "enabled",
        "sort_order",
    )
    list_editable = ("enabled", "sort_order")
    list_filter = ("enabled", "kind", "reasoning")
    search_fields = ("name", "endpoints__upstream_model", "aliases__name")

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("endpoints")

    @admin.display(description=_("enabled endpoints"))
    def endpoint_count(self, obj):
        return sum(1 for endpoint in obj.endpoints.all() if endpoint.enabled)
