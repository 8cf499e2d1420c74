from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts.identifiers import email_normalize, phone_normalize
from accounts.models import Region
from accounts.services import account_create_with_key


class Command(BaseCommand):
    help = (
        "Create an account (with its 'default' API key) for an email address or a phone "
        "number, and print the key once."
    )

    def add_arguments(self, parser):
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--email", help="email address")
        who.add_argument("--phone", help="mobile number with country code, e.g. +8613800138000")
        parser.add_argument("--staff", action="store_true", help="may use the admin and review")

    def handle(self, *args, **options):
        try:
            if options["email"]:
                identity = {"email": email_normalize(options["email"])}
                region = Region.OTHER
            else:
                phone = phone_normalize(options["phone"])
                identity = {"phone": phone}
                region = Region.MAINLAND_CHINA if phone.startswith("+86") else Region.OTHER
            user, raw_key = account_create_with_key(
                **identity, region=region, is_staff=options["staff"]
            )
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        self.stdout.write(f"Created account {user} ({user.public_id}).")
        self.stdout.write("Its default API key (shown only now; the owner can reveal it later):")
        self.stdout.write(raw_key)
