"""Optional error reporting to Sentry (or any server speaking its protocol, e.g. GlitchTip).

Only imported when ``SENTRY_DSN`` is set (see the end of ``portal.settings``). Events carry no
personal data (``send_default_pii=False``: no cookies, no user details, no request bodies), the
SDK's own scrubber drops ``Authorization``/``x-api-key`` headers, and ``scrub_event`` masks
anything shaped like an API key wherever else it appears — a message, a local variable, a
breadcrumb.
"""

from observability.logging import redact


def scrub_event(event, hint=None):
    return _scrub(event)


def _scrub(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return value


def sentry_init(*, dsn: str, environment: str, traces_sample_rate: float) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        integrations=[DjangoIntegration(), CeleryIntegration()],
        send_default_pii=False,
        max_request_body_size="never",
        include_local_variables=False,
        traces_sample_rate=traces_sample_rate,
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        before_breadcrumb=scrub_event,
    )
