"""The one ASGI entry point, for the portal and the model API alike.

``/openai`` and ``/anthropic`` go to the gateway's lean ASGI handlers (``gateway.app``);
every other path goes to Django.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

django_application = get_asgi_application()

from gateway.app import GatewayApplication, serve  # noqa: E402  (needs Django set up first)

application = serve(GatewayApplication(django_application))

# Outermost: request id, access log and request metrics for the portal and the gateway alike.
from portal.logging import wrap_asgi  # noqa: E402  (needs Django set up first)

application = wrap_asgi(application)
