"""Signals of the keys app: the one place where an app that depends on ``keys`` acts inside
a key service's transaction without ``keys`` importing it.

``daily_cap_set`` is sent by ``keys.services.api_key_set_controls``, inside its transaction,
when a key's daily token cap is set (from none or to another value), with ``api_key``. The
usage app keeps each capped key's daily counter and brings it up to what the key already
spent today (``usage.services.key_cap_counter_catch_up``): ``keys`` may not import ``usage``,
which depends on it.
"""

from django.dispatch import Signal

daily_cap_set = Signal()
