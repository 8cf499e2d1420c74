from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from usage import services
from usage.quota import effective_quota


class Command(BaseCommand):
    help = "Set an account's daily token quota (audited). --tokens default restores the default."

    def add_arguments(self, parser):
        parser.add_argument("--account", required=True, help="Email, phone (E.164) or public id.")
        parser.add_argument(
            "--tokens", required=True, help="Tokens per day, or 'default' for the platform default."
        )
        parser.add_argument("--reason", required=True, help="Why (kept in the audit trail).")

    def handle(self, *, account, tokens, reason, **options):
        user = _find_account(account)
        if tokens.strip().lower() == "default":
            new_quota = None
        else:
            try:
                new_quota = int(tokens.replace(",", "").replace("_", ""))
            except ValueError:
                raise CommandError("--tokens must be a whole number or 'default'.") from None
        old = effective_quota(user.daily_quota)
        try:
            change = services.quota_set(user=user, new_quota=new_quota, reason=reason, actor=None)
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        if change is None:
            self.stdout.write(f"{user}: unchanged ({old:,} tokens a day).")
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"{user}: {old:,} -> {effective_quota(new_quota):,} tokens a day "
                f"(audit record {change.pk})."
            )
        )


def _find_account(identifier: str):
    User = get_user_model()
    identifier = identifier.strip()
    query = Q(email__iexact=identifier) | Q(phone=identifier)
    try:
        import uuid

        query |= Q(public_id=uuid.UUID(identifier))
    except ValueError:
        pass
    matches = list(User.objects.filter(query)[:2])
    if len(matches) != 1:
        raise CommandError(f"No single account matches {identifier!r}.")
    return matches[0]
