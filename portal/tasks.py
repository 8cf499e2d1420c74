from celery import shared_task


@shared_task(ignore_result=False)
def ping(payload: str = "pong") -> str:
    """Round trip through the broker and a worker; used by operators and the Celery tests."""
    return payload
