"""The one ASGI entry point, for the portal and the model API alike.

``/openai`` and ``/anthropic`` go to the gateway's lean ASGI handlers (``gateway.app``);
every other path goes to Django.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

django_application = get_asgi_application()

from gateway.app import GatewayApplication  # noqa: E402 - needs the settings loaded above

application = GatewayApplication(django_application)
