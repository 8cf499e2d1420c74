"""What the gateway would answer for a secret right now: the tests' one "does this key work?".

It runs the gateway's own authentication (``gateway.serving.auth.KeyCache`` over the ledger's
``find_key``) rather than a copy of it, so a test that passes here passes for a real client.
The ORM ledger is used on every database: it reads through Django's connection and so sees
the test's own transaction, which an asyncpg connection of ``PgLedger`` would not.
"""

from asgiref.sync import async_to_sync

from gateway.serving.auth import KeyCache
from gateway.serving.errors import GatewayError
from usage.ledger import KeyRow
from usage.ledger.orm import OrmLedger


def gateway_answer(secret: str | None) -> KeyRow | str:
    """The key's row when the gateway accepts ``secret``, else the code it refuses it with.

    Codes: ``missing_api_key`` and ``invalid_api_key`` (401: unknown, forged, regenerated or
    deleted), ``api_key_disabled`` and ``account_disabled`` (403).
    """
    # fresh: the row as it is now, which is what the reservation statement re-checks anyway.
    keys = KeyCache(OrmLedger())
    try:
        row, _digest = async_to_sync(keys.authenticate)(secret, fresh=True)
    except GatewayError as refusal:
        return refusal.code
    return row
