from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from gateway.models import Model
from keys.crypto import encrypt_secret


class ModelForm(forms.ModelForm):
    upstream_base_url = forms.URLField(
        label=_("upstream base URL"),
        required=False,
        assume_scheme="https",
        help_text=_("Including /v1, as an OpenAI SDK base_url. Empty for the demo upstream."),
    )
    upstream_key = forms.CharField(
        label=_("upstream API key"),
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=_("Stored encrypted. Leave empty to keep the current key."),
    )
    clear_upstream_key = forms.BooleanField(label=_("remove the upstream key"), required=False)

    class Meta:
        model = Model
        fields = [
            "name",
            "description",
            "upstream_kind",
            "upstream_base_url",
            "upstream_model",
            "context_window",
            "max_output_tokens",
            "kind",
            "reasoning",
            "enabled",
            "sort_order",
        ]

    def save(self, commit=True):
        instance = super().save(commit=False)
        if self.cleaned_data.get("clear_upstream_key"):
            instance.upstream_key_encrypted = ""
        elif self.cleaned_data.get("upstream_key"):
            instance.upstream_key_encrypted = encrypt_secret(self.cleaned_data["upstream_key"])
        if commit:
            instance.save()
        return instance


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    form = ModelForm
    list_display = (
        "name",
        "upstream_kind",
        "upstream_base_url",
        "context_window",
        "max_output_tokens",
        "kind",
        "reasoning",
        "enabled",
        "sort_order",
        "has_upstream_key",
    )
    list_editable = ("enabled", "sort_order")
    list_filter = ("enabled", "upstream_kind", "kind", "reasoning")
    search_fields = ("name", "upstream_model")

    @admin.display(boolean=True, description=_("upstream key"))
    def has_upstream_key(self, obj):
        return bool(obj.upstream_key_encrypted)
