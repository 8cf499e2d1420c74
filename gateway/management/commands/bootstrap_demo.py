from django.core.management.base import BaseCommand

from gateway.services import catalog_bootstrap


class Command(BaseCommand):
    help = (
        "Ensure the default model exists: on the demo upstream, or on UPSTREAM_BASE_URL / "
        "UPSTREAM_MODEL / UPSTREAM_API_KEY when those are set. Safe to run repeatedly."
    )

    def handle(self, *args, **options):
        _model, summary = catalog_bootstrap()
        self.stdout.write(summary)
