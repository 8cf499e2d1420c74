# The in-process gateway over the demo upstream, as the gateway's own tests use it.
from tests.acceptance.conftest import live_key  # noqa: F401
from tests.gateway.conftest import (  # noqa: F401
    alice_key,
    bob_key,
    demo_model,
    demo_upstream,
    gateway_settings,
    gw,
)
