from django.core.management.base import BaseCommand, CommandError

from gateway.services import models_reencrypt_upstream_keys
from keys.services import api_keys_reencrypt


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret (API keys' encrypted copies, models' upstream keys) "
        "under the current KEY_ENCRYPTION_KEY, after a rotation that listed the previous key in "
        "KEY_ENCRYPTION_OLD_KEYS. Safe to interrupt and to run again; once it reports nothing "
        "left under an old key, the old key can be removed."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would change; write nothing."
        )

    def handle(self, *args, dry_run=False, **options):
        results = {
            "API keys": api_keys_reencrypt(dry_run=dry_run),
            "model upstream keys": models_reencrypt_upstream_keys(dry_run=dry_run),
        }
        verb = "would move" if dry_run else "moved"
        for what, done in results.items():
            self.stdout.write(
                f"{what}: {verb} {done.moved} to the current key, {done.current} already "
                f"under it, {done.undecryptable} undecryptable"
            )
        undecryptable = sum(done.undecryptable for done in results.values())
        if undecryptable:
            raise CommandError(
                f"{undecryptable} stored secrets cannot be decrypted with KEY_ENCRYPTION_KEY or "
                "KEY_ENCRYPTION_OLD_KEYS and were left unchanged: list the key they were "
                "encrypted with in KEY_ENCRYPTION_OLD_KEYS and run this again."
            )
