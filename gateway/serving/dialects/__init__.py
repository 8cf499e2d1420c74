"""API dialects: each one is a module that speaks one public API to clients.

A dialect module exposes ``dialect``, an instance of ``gateway.serving.dialects.base.Dialect``. The
pipeline (``gateway.serving.pipeline``) does everything that is the same for all of them — auth, the
catalog, the context-length check, rate limits, quota reserve/settle, the upstream call, usage
records — and asks the dialect only for what differs (see ``base.Dialect``). ``gateway.serving.app``
mounts every module listed in ``DIALECT_MODULES`` at the dialect's ``prefix`` (dialects may share
one: the first listed renders the errors of paths none of them serves).
"""

DIALECT_MODULES = (
    "gateway.serving.dialects.openai",
    "gateway.serving.dialects.openai_responses",
    "gateway.serving.dialects.openai_embeddings",
    "gateway.serving.dialects.anthropic",
)
