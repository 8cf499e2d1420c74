"""The model API's serving path: raw ASGI, no Django request machinery.

``app`` (the ASGI application and its mounts) → ``pipeline`` (one chat request, the same for
every dialect) over ``auth``, ``ratelimit`` (with ``redis_wire``, a small pipelined Redis
client), ``catalog`` (a per-process snapshot of the model catalog), ``upstream``, ``recorder``
(batched usage records), ``http``, ``errors``, ``tokens`` and ``dialects``. The rest of the
``gateway`` app (models, admin, services, selectors, checks, commands, the demo upstream) is
ordinary Django.
"""
