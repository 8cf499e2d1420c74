"""One process of the multi-process daily-cap test (``test_key_cap``): reserves and settles
through this database's ledger as fast as it can and prints what it charged, as JSON.

    python -m tests.usage.key_cap_worker KEY_ID DIGEST DAY REQUESTS
"""

import asyncio
import datetime as dt
import json
import sys

import django


async def _run(key_id: int, digest: str, day: dt.date, requests: int) -> dict:
    from usage.ledger import Refused, ledger_for_database

    ledger = ledger_for_database()
    await ledger.open()
    charged = granted = 0
    refused: dict[str, int] = {}

    async def one():
        nonlocal charged, granted
        outcome = await ledger.reserve(
            key_id=key_id, digest=digest, day=day, input_tokens=100, max_output_tokens=400
        )
        if isinstance(outcome, Refused):
            refused[outcome.reason] = refused.get(outcome.reason, 0) + 1
            return
        granted += 1
        await asyncio.sleep(0)
        # The whole grant is used: every admitted request spends all it was allowed.
        await ledger.settle(
            reserved=outcome, input_tokens=outcome.input_tokens, output_tokens=outcome.output_budget
        )
        charged += outcome.tokens

    try:
        for start in range(0, requests, 8):
            await asyncio.gather(*(one() for _ in range(start, min(start + 8, requests))))
    finally:
        await ledger.close()
    return {"charged": charged, "granted": granted, "refused": refused}


if __name__ == "__main__":
    django.setup()
    key_id, digest, day, requests = sys.argv[1:5]
    result = asyncio.run(_run(int(key_id), digest, dt.date.fromisoformat(day), int(requests)))
    print(json.dumps(result))
