import argparse
import os

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from gateway.models import Model, UpstreamEndpoint
from gateway.selectors import endpoint_list
from gateway.services import endpoint_save

KINDS = {
    "openai": UpstreamEndpoint.Kind.OPENAI_COMPATIBLE,
    "demo": UpstreamEndpoint.Kind.DEMO,
    "anthropic": UpstreamEndpoint.Kind.ANTHROPIC,
}


def _options(parser, *, new: bool) -> None:
    parser.add_argument("--kind", choices=sorted(KINDS), help="Default for add: openai.")
    parser.add_argument("--upstream-model", help="The server's own model name ('' = public).")
    parser.add_argument(
        "--responses-api",
        action=argparse.BooleanOptionalAction,
        help="An openai server that also serves the Responses API: Responses clients are "
        "passed through to its /responses (default for add: no).",
    )
    parser.add_argument(
        "--key-env", metavar="VAR", help="Read the API key from this environment variable."
    )
    parser.add_argument("--priority", type=int, help="Lower is preferred (default 0).")
    parser.add_argument("--weight", type=int, help="Share within its priority tier (default 1).")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        help="Requests at once in each gateway process; past it they queue (empty: no cap).",
    )
    parser.add_argument("--connect-timeout", type=float, help="Seconds.")
    parser.add_argument("--first-byte-timeout", type=float, help="Seconds.")
    if not new:
        parser.add_argument("--url", help="A new base URL.")
        parser.add_argument("--enable", action="store_true", help="Enable the endpoint.")


class Command(BaseCommand):
    help = (
        "List and edit the upstream endpoints that serve each model. Changes reach every "
        "gateway process within seconds (the catalog snapshot). Keys are never printed."
    )

    def add_arguments(self, parser):
        commands = parser.add_subparsers(dest="action", required=True)
        listing = commands.add_parser("list", help="Every endpoint, by model and priority.")
        listing.add_argument("--model", help="Only this model's endpoints.")
        add = commands.add_parser("add", help="Add an endpoint to MODEL.")
        add.add_argument("model")
        add.add_argument(
            "url",
            nargs="?",
            default="",
            help="Base URL: with /v1 for openai, without for anthropic, none for demo.",
        )
        _options(add, new=True)
        change = commands.add_parser("set", help="Change endpoint ID.")
        change.add_argument("id", type=int)
        _options(change, new=False)
        disable = commands.add_parser("disable", help="Stop routing to endpoint ID.")
        disable.add_argument("id", type=int)

    def handle(self, *args, action, **options):
        getattr(self, f"_{action}")(**options)

    def _list(self, *, model=None, **_options):
        rows = endpoint_list(model_name=model)
        if model is not None and not Model.objects.filter(name=model).exists():
            raise CommandError(f"No model named {model!r}.")
        self.stdout.write(
            "ID\tMODEL\tKIND\tURL\tUPSTREAM MODEL\tRESPONSES\tPRIORITY\tWEIGHT\tMAX\tSTATE\tKEY"
        )
        for row in rows:
            self.stdout.write(
                "\t".join(
                    str(value)
                    for value in (
                        row.pk,
                        row.model.name,
                        row.kind,
                        row.base_url or "(DEMO_UPSTREAM_URL)",
                        row.upstream_model or "-",
                        "native" if row.responses_api else "-",
                        row.priority,
                        row.weight,
                        row.max_concurrency or "-",
                        "enabled" if row.enabled else "disabled",
                        "yes" if row.api_key_encrypted else "no",
                    )
                )
            )

    def _add(self, *, model, url, **options):
        try:
            target = Model.objects.get(name=model)
        except Model.DoesNotExist:
            raise CommandError(f"No model named {model!r} (see the admin's model list).") from None
        endpoint = UpstreamEndpoint(model=target, kind=KINDS[options.get("kind") or "openai"])
        self._save(endpoint, url=url, **options)
        self.stdout.write(f"Added endpoint {endpoint.pk} to {target.name}: {endpoint}.")

    def _set(self, *, id, url=None, enable=False, **options):
        endpoint = self._endpoint(id)
        if options.get("kind"):
            endpoint.kind = KINDS[options["kind"]]
        self._save(endpoint, url=url, enabled=True if enable else None, **options)
        self.stdout.write(f"Changed endpoint {endpoint.pk} of {endpoint.model.name}.")

    def _disable(self, *, id, **_options):
        endpoint = self._endpoint(id)
        endpoint_save(endpoint=endpoint, enabled=False)
        self.stdout.write(f"Disabled endpoint {endpoint.pk} of {endpoint.model.name}.")

    def _endpoint(self, pk: int) -> UpstreamEndpoint:
        try:
            return UpstreamEndpoint.objects.select_related("model").get(pk=pk)
        except UpstreamEndpoint.DoesNotExist:
            raise CommandError(
                f"No upstream endpoint with ID {pk} (manage.py upstream list)."
            ) from None

    def _save(self, endpoint, *, url, enabled=None, **options):
        raw_key = None
        if options.get("key_env"):
            raw_key = os.environ.get(options["key_env"])
            if raw_key is None:
                raise CommandError(f"The environment variable {options['key_env']} is not set.")
        try:
            endpoint_save(
                endpoint=endpoint,
                raw_key=raw_key,
                base_url=url or None,
                upstream_model=options.get("upstream_model"),
                responses_api=options.get("responses_api"),
                priority=options.get("priority"),
                weight=options.get("weight"),
                max_concurrency=options.get("max_concurrency"),
                connect_timeout_seconds=options.get("connect_timeout"),
                first_byte_timeout_seconds=options.get("first_byte_timeout"),
                enabled=enabled,
            )
        except ValidationError as error:
            problems = "; ".join(
                f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items()
            )
            raise CommandError(f"Not saved: {problems}") from None
