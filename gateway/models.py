from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

# The model the catalog starts with (served by the built-in demo upstream until an upstream is
# configured), and the limits a new model gets unless staff set others.
DEMO_MODEL_NAME = "LongCat-Flash-Chat"
DEFAULT_CONTEXT_WINDOW = 131_072
DEFAULT_MAX_OUTPUT_TOKENS = 8_192


class Model(models.Model):
    """A model in the public catalog and the upstream that serves it."""

    class UpstreamKind(models.TextChoices):
        DEMO = "demo", _("Demo (built in)")
        OPENAI_COMPATIBLE = "openai_compatible", _("OpenAI-compatible server")

    class Kind(models.TextChoices):
        CHAT = "chat", _("Chat (chat completions, responses, messages)")
        EMBEDDING = "embedding", _("Embeddings")

    class Reasoning(models.TextChoices):
        """How the upstream is asked to reason when a client asks for it (Anthropic
        ``thinking``, OpenAI ``reasoning_effort``, Responses ``reasoning.effort``)."""

        NONE = "none", _("Not asked (reasoning parameters are dropped)")
        REASONING_EFFORT = "reasoning_effort", _("OpenAI reasoning_effort")
        CHAT_TEMPLATE = (
            "chat_template_kwargs",
            _('vLLM/SGLang chat_template_kwargs {"enable_thinking": …}'),
        )

    name = models.CharField(_("public name"), max_length=128, unique=True)
    description = models.CharField(_("description"), max_length=200, blank=True)
    upstream_kind = models.CharField(
        _("upstream kind"),
        max_length=32,
        choices=UpstreamKind.choices,
        default=UpstreamKind.OPENAI_COMPATIBLE,
    )
    # Empty for the demo kind: the gateway then uses settings.DEMO_UPSTREAM_URL.
    upstream_base_url = models.URLField(
        _("upstream base URL"),
        max_length=500,
        blank=True,
        help_text=_("Including /v1, as an OpenAI SDK base_url. Empty for the demo upstream."),
    )
    upstream_model = models.CharField(
        _("upstream model name"),
        max_length=200,
        blank=True,
        help_text=_("Empty means the same as the public name."),
    )
    # Fernet token (keys.crypto.encrypt_secret); never shown in the admin.
    upstream_key_encrypted = models.TextField(blank=True, default="", editable=False)
    context_window = models.PositiveIntegerField(
        _("context window (tokens)"), default=DEFAULT_CONTEXT_WINDOW
    )
    max_output_tokens = models.PositiveIntegerField(
        _("max output tokens"), default=DEFAULT_MAX_OUTPUT_TOKENS
    )
    kind = models.CharField(
        _("kind"),
        max_length=16,
        choices=Kind.choices,
        default=Kind.CHAT,
        help_text=_(
            "Embedding models answer only /openai/v1/embeddings; chat models every other endpoint."
        ),
    )
    reasoning = models.CharField(
        _("reasoning"),
        max_length=32,
        choices=Reasoning.choices,
        default=Reasoning.NONE,
        help_text=_(
            "How the model server is asked to reason when a client asks for it. Its reasoning "
            "(reasoning_content) reaches clients as thinking blocks and counts as output."
        ),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    sort_order = models.IntegerField(_("sort order"), default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("model")
        verbose_name_plural = _("models")
        ordering = ["sort_order", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_output_tokens__gte=1) & Q(context_window__gt=0),
                name="gateway_model_positive_limits",
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def is_demo(self) -> bool:
        return self.upstream_kind == self.UpstreamKind.DEMO
