from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

# The model the catalog starts with (served by the built-in demo upstream until an upstream is
# configured), and the limits a new model gets unless staff set others.
DEMO_MODEL_NAME = "LongCat-Flash-Chat"
DEFAULT_CONTEXT_WINDOW = 131_072
DEFAULT_MAX_OUTPUT_TOKENS = 8_192
ENDPOINT_BASE_URL_HELP = _(
    "OpenAI-compatible: including /v1, as an OpenAI SDK base_url. Anthropic: without /v1, as "
    "an Anthropic SDK base_url (https://api.anthropic.com). Empty for the demo upstream."
)


class Model(models.Model):
    """A model in the public catalog. Its upstream endpoints (``UpstreamEndpoint``) serve it.

    ``upstream_kind``, ``upstream_base_url``, ``upstream_model`` and ``upstream_key_encrypted``
    are the single upstream of before endpoint pools: migration 0005 copied them to an
    endpoint. They are kept (scripts and fixtures still create models with them) and read only
    for a model that has no endpoint at all, as its one implicit endpoint.
    """

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

    class TokenCounter(models.TextChoices):
        """How input tokens are counted before the upstream answers (gateway.serving.counting)."""

        HEURISTIC = "heuristic", _("Built-in estimate (errs high)")
        UPSTREAM = "upstream", _("The model server's /tokenize (vLLM, SGLang)")
        FILE = "file", _("A tokenizer file (tokenizer.json)")

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
    token_counter = models.CharField(
        _("input token counter"),
        max_length=16,
        choices=TokenCounter.choices,
        default=TokenCounter.HEURISTIC,
        help_text=_(
            "How a prompt's tokens are counted before the model server answers (to reserve "
            "quota and check the context window). Charges always come from the server's report."
        ),
    )
    tokenizer_file = models.CharField(
        _("tokenizer file"),
        max_length=500,
        blank=True,
        help_text=_(
            "For the tokenizer-file counter: the path of the model's tokenizer.json on the "
            "gateway hosts (the Hugging Face format vLLM and SGLang load)."
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

    def clean(self):
        super().clean()
        if self.token_counter == self.TokenCounter.FILE:
            from gateway.serving.counting import tokenizer_file_problem

            problem = tokenizer_file_problem(self.tokenizer_file)
            if problem:
                raise ValidationError({"tokenizer_file": problem})

    @property
    def is_demo(self) -> bool:
        """Served by the demo upstream only (prefetch ``endpoints`` when listing models)."""
        endpoints = [endpoint for endpoint in self.endpoints.all() if endpoint.enabled]
        if not endpoints:
            return self.upstream_kind == self.UpstreamKind.DEMO
        return all(endpoint.is_demo for endpoint in endpoints)


class UpstreamEndpoint(models.Model):
    """One model server serving a model. The gateway routes among a model's enabled endpoints:
    the best (lowest) priority tier that has a healthy one, by weight within it, and tries the
    next one when the chosen one fails before the client received a byte."""

    class Kind(models.TextChoices):
        """The protocol the gateway speaks to the endpoint: OpenAI chat completions (the demo
        upstream too; an OpenAI-compatible one marked ``responses_api`` also takes Responses
        requests as they are), or Anthropic Messages (``gateway.serving.exchange``)."""

        OPENAI_COMPATIBLE = "openai_compatible", _("OpenAI-compatible server")
        DEMO = "demo", _("Demo (built in)")
        ANTHROPIC = "anthropic", _("Anthropic Messages API")

    model = models.ForeignKey(
        Model, on_delete=models.CASCADE, related_name="endpoints", verbose_name=_("model")
    )
    kind = models.CharField(
        _("kind"), max_length=32, choices=Kind.choices, default=Kind.OPENAI_COMPATIBLE
    )
    # Empty for the demo kind: the gateway then uses settings.DEMO_UPSTREAM_URL.
    base_url = models.URLField(
        _("base URL"),
        max_length=500,
        blank=True,
        help_text=ENDPOINT_BASE_URL_HELP,
    )
    upstream_model = models.CharField(
        _("upstream model name"),
        max_length=200,
        blank=True,
        help_text=_("Empty means the same as the model's public name."),
    )
    # Fernet token (keys.crypto.encrypt_secret); never shown in the admin.
    api_key_encrypted = models.TextField(blank=True, default="", editable=False)
    priority = models.PositiveSmallIntegerField(
        _("priority"),
        default=0,
        help_text=_("Lower is preferred: a tier serves only while every better tier is down."),
    )
    weight = models.PositiveIntegerField(
        _("weight"), default=1, help_text=_("Share of the requests within its priority tier.")
    )
    max_concurrency = models.PositiveIntegerField(
        _("maximum concurrent requests"),
        null=True,
        blank=True,
        # 0 would hold every request in the queue until it times out; disable it instead.
        validators=[MinValueValidator(1)],
        help_text=_(
            "In each gateway process: past it, requests wait in the model's queue, accounts "
            "taking turns. Divide the server's capacity by the number of gateway processes. "
            "Empty: no cap."
        ),
    )
    responses_api = models.BooleanField(
        _("serves the Responses API"),
        default=False,
        help_text=_(
            "OpenAI-compatible servers only (OpenAI, recent vLLM): Responses API clients are "
            "passed through to its /responses instead of being translated to chat completions."
        ),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    connect_timeout_seconds = models.FloatField(
        _("connect timeout (seconds)"),
        null=True,
        blank=True,
        help_text=_("Empty: UPSTREAM_CONNECT_TIMEOUT_SECONDS."),
    )
    first_byte_timeout_seconds = models.FloatField(
        _("first-byte timeout (seconds)"),
        null=True,
        blank=True,
        help_text=_(
            "How long to wait for the response headers before trying another endpoint. "
            "Empty: UPSTREAM_READ_TIMEOUT_SECONDS."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("upstream endpoint")
        verbose_name_plural = _("upstream endpoints")
        ordering = ["model_id", "priority", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(weight__gte=1), name="gateway_endpoint_positive_weight"
            ),
            models.CheckConstraint(
                condition=(
                    (Q(connect_timeout_seconds__isnull=True) | Q(connect_timeout_seconds__gt=0))
                    & (
                        Q(first_byte_timeout_seconds__isnull=True)
                        | Q(first_byte_timeout_seconds__gt=0)
                    )
                ),
                name="gateway_endpoint_positive_timeouts",
            ),
        ]

    def __str__(self):
        return f"#{self.pk} {self.base_url or self.kind}"

    @property
    def is_demo(self) -> bool:
        return self.kind == self.Kind.DEMO

    def clean(self):
        if self.responses_api and self.kind != self.Kind.OPENAI_COMPATIBLE:
            raise ValidationError(
                {
                    "responses_api": _(
                        "Only an OpenAI-compatible server can serve the Responses API."
                    )
                }
            )
        # Anthropic's API has no embeddings: such an endpoint could never answer.
        model = getattr(self, "model", None)
        if (
            self.kind == self.Kind.ANTHROPIC
            and model is not None
            and model.kind == Model.Kind.EMBEDDING
        ):
            raise ValidationError(
                {"kind": _("An embedding model cannot be served by an Anthropic endpoint.")}
            )


class ModelAlias(models.Model):
    """Another public name that resolves to ``model`` (requests, key allow-lists by the
    model's own name, usage records under the name the client sent)."""

    model = models.ForeignKey(
        Model, on_delete=models.CASCADE, related_name="aliases", verbose_name=_("model")
    )
    name = models.CharField(_("alias"), max_length=128, unique=True)
    listed = models.BooleanField(
        _("listed"), default=False, help_text=_("Shown in /v1/models next to the model.")
    )

    class Meta:
        verbose_name = _("model alias")
        verbose_name_plural = _("model aliases")
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        if Model.objects.filter(name=self.name).exists():
            raise ValidationError({"name": _("A model already has this name.")})
