import datetime as dt
import json

from django.core.management.base import BaseCommand, CommandError

from usage.quota import quota_day
from usage.selectors import usage_day_report


class Command(BaseCommand):
    help = "Platform usage for one quota day (Beijing time): totals, per model, top accounts."

    def add_arguments(self, parser):
        parser.add_argument("--day", help="YYYY-MM-DD (default: today's quota day).")
        parser.add_argument("--top", type=int, default=10, help="How many top accounts to list.")
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="Machine-readable output."
        )

    def handle(self, *, day, top, as_json, **options):
        try:
            day = dt.date.fromisoformat(day) if day else quota_day()
        except ValueError:
            raise CommandError("--day must look like 2026-03-01.") from None
        report = usage_day_report(day=day, top=top)
        if as_json:
            self.stdout.write(_json(report))
            return
        c = report["counters"]
        self.stdout.write(f"Quota day {day.isoformat()} (Asia/Shanghai)")
        self.stdout.write(
            f"  accounts with requests: {c['accounts']:,}\n"
            f"  requests: {c['requests']:,}\n"
            f"  input tokens: {c['input_tokens']:,}\n"
            f"  output tokens: {c['output_tokens']:,}\n"
            f"  reserved now: {c['reserved_tokens']:,}"
        )
        if report["by_model"]:
            self.stdout.write("  per model:")
            for row in report["by_model"]:
                self.stdout.write(
                    f"    {row['model']}: {row['requests']:,} requests, "
                    f"{row['input_tokens']:,} in / {row['output_tokens']:,} out, "
                    f"{row['errors']:,} failed"
                )
        if report["top_accounts"]:
            self.stdout.write("  top accounts:")
            for row in report["top_accounts"]:
                who = row["user__email"] or row["user__phone"] or row["user__public_id"]
                self.stdout.write(
                    f"    {who}: {row['total']:,} tokens, {row['requests']:,} requests"
                )
        closed = report["closed_by"]
        self.stdout.write(
            f"  closed by the reset of {closed.started_at:%Y-%m-%d %H:%M} UTC"
            if closed
            else "  not closed by a reset yet"
        )


def _json(report) -> str:
    closed = report.pop("closed_by")
    report["closed_at"] = closed.finished_at.isoformat() if closed else None
    return json.dumps(report, default=str, indent=2)
