"""Usage records and rollups, written in batches by one background task per process.

A request only appends to a list; the task writes everything gathered every
``FLUSH_SECONDS`` (or sooner when ``FLUSH_ROWS`` pile up) in one transaction, so neither a
request nor a streamed chunk costs a round trip for its record. Shutdown flushes what is left.
A hard crash can lose at most the last ``FLUSH_SECONDS`` of records; the quota counter is not
among them (it is settled per request and never batched). ``last_used_at`` of keys rides along,
at most once per ``TOUCH_EVERY_SECONDS`` per key.

Quota alerts ride along too: a settlement that crossed a whole percentage of the account's
quota or a key's cap queues a ``Charge`` (``add_charge``), and each flush hands the charges to
``alerts.services.alert_crossings_record`` after the records, in one call (one query for the
settings, one insert; conflicts ignored, so a charge written twice alerts once). Nothing is
sent inside a request; delivery is queued after the insert commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time

from asgiref.sync import sync_to_async
from django.db import connection

from alerts.detection import Charge
from alerts.services import alert_crossings_record
from usage.ledger import Ledger, RecordRow

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.2
FLUSH_ROWS = 500
TOUCH_EVERY_SECONDS = 30.0
MAX_BACKLOG_ROWS = 200_000


class Recorder:
    def __init__(self, ledger: Ledger, *, flush_seconds: float = FLUSH_SECONDS):
        self.ledger = ledger
        self.flush_seconds = flush_seconds
        self._rows: list[RecordRow] = []
        self._touched: dict[int, dt.datetime] = {}
        self._touched_at: dict[int, float] = {}
        self._charges: list[Charge] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._flushing = asyncio.Lock()
        self.batches = 0  # writes made, for tests and benchmarks

    def add(self, row: RecordRow) -> None:
        self._rows.append(row)
        if row.api_key_id is not None:
            now = time.monotonic()
            if now - self._touched_at.get(row.api_key_id, float("-inf")) >= TOUCH_EVERY_SECONDS:
                self._touched_at[row.api_key_id] = now
                self._touched[row.api_key_id] = row.created_at
        if len(self._rows) >= FLUSH_ROWS:
            self._wake.set()

    def add_charge(self, charge: Charge) -> None:
        """A settlement that may have crossed an alert threshold, written with the next batch."""
        self._charges.append(charge)
        if len(self._charges) >= FLUSH_ROWS:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
            self._wake.clear()
            # Shielded: stopping the loop must not abort a batch halfway.
            await asyncio.shield(self.flush())

    async def flush(self) -> None:
        async with self._flushing:
            await self._flush_records()
            await self._flush_charges()

    async def _flush_charges(self) -> None:
        if not self._charges:
            return
        charges, self._charges = self._charges, []
        try:
            await sync_to_async(_alert_crossings_record, thread_sensitive=False)(charges)
        except Exception:
            # The database is away: try again with the next batch (the insert ignores
            # crossings already written, so a retry never alerts twice).
            log.exception("quota alerts: write of %d charges failed; will retry", len(charges))
            self._charges[:0] = charges[-MAX_BACKLOG_ROWS:]

    async def _flush_records(self) -> None:
        if not self._rows and not self._touched:
            return
        rows, self._rows = self._rows, []
        touched, self._touched = self._touched, {}
        try:
            self.batches += 1
            await self.ledger.write_batch(rows, touched)
        except Exception as error:
            if not _is_refused_row(error):
                # The database is unreachable or failing: keep everything for the next try.
                log.exception("usage records: write of %d rows failed; will retry", len(rows))
                self._rows[:0] = rows[-MAX_BACKLOG_ROWS:]
                for key_id, when in touched.items():
                    self._touched.setdefault(key_id, when)
                return
            # A row points at an account or key deleted since its request, or holds a
            # value the database refuses: write the rows one by one so that one of them
            # cannot hold back the others (a batch it refuses would be retried forever).
            await self._write_one_by_one(rows)
            if touched:
                with contextlib.suppress(Exception):
                    await self.ledger.write_batch([], touched)

    async def _write_one_by_one(self, rows: list[RecordRow]) -> None:
        for row in rows:
            for attempt in (row, dataclasses.replace(row, api_key_id=None)):
                try:
                    await self.ledger.write_batch([attempt], {})
                    break
                except Exception as error:
                    if not _is_refused_row(error):
                        self._rows.append(row)
                        break
            else:
                log.warning("usage records: dropped a record the database refuses")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


def _alert_crossings_record(charges: list[Charge]) -> None:
    # In a worker thread no Django request ever finishes: close its connection here, rather
    # than keep one open per pool thread for a write that happens a few times a day per account.
    try:
        alert_crossings_record(charges=charges)
    finally:
        connection.close()


def _is_refused_row(error: BaseException) -> bool:
    # A row the database will never take: a constraint (django.db.IntegrityError, asyncpg's
    # IntegrityConstraintViolationError) or a value (DataError in both, e.g. NUL in text).
    return any(
        cls.__name__ in ("IntegrityError", "IntegrityConstraintViolationError", "DataError")
        for cls in type(error).__mro__
    )
