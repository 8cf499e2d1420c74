from celery import shared_task

from usage import services
from usage.ledger import partitions, upkeep


@shared_task
def daily_reset() -> dict | None:
    """Beat runs this at 00:00 Asia/Shanghai (see CELERY_BEAT_SCHEDULE)."""
    run = upkeep.usage_daily_reset()
    if run is None:
        return None
    return {
        "day": run.day.isoformat(),
        "days_closed": run.days_closed,
        "reservations_released": run.reservations_released,
        "rollups_written": run.rollups_written,
        "records_pruned": run.records_pruned,
    }


@shared_task
def partitions_maintain() -> list[str]:
    """Keep the usage records' daily partitions ahead of the clock (PostgreSQL; a no-op on
    SQLite). Hourly and idempotent, so a beat that was down for days catches up at once."""
    return partitions.usage_partitions_ensure()


@shared_task
def reservations_sweep() -> int:
    """Give back tokens held by requests that died in flight, without waiting for midnight."""
    released, _tokens = upkeep.reservations_release_stale(
        older_than=upkeep.reservation_stale_after()
    )
    return released


@shared_task
def quota_application_notify(application_id: int) -> None:
    """Email and/or text an applicant the decision on their quota application."""
    services.quota_application_notify(application_id=application_id)
