from django.core.management.base import BaseCommand

from gateway.demo_upstream import run


class Command(BaseCommand):
    help = "Run the built-in demo upstream (an OpenAI-compatible server with deterministic text)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8100)

    def handle(self, *args, host, port, **options):
        self.stdout.write(f"Demo upstream on http://{host}:{port}/v1")
        self.stdout.flush()
        run(host=host, port=port)
