"""The catalog starts with LongCat-Flash-Chat on the built-in demo upstream.

``manage.py bootstrap_demo`` (run by ``make run``) points it at a real server when
UPSTREAM_BASE_URL is set.
"""

from django.db import migrations


def create_demo_model(apps, schema_editor):
    Model = apps.get_model("gateway", "Model")
    Model.objects.get_or_create(
        name="LongCat-Flash-Chat",
        defaults={
            "description": "High-performance general-purpose chat model",
            "upstream_kind": "demo",
            "upstream_base_url": "",
            "upstream_model": "",
            "context_window": 131072,
            "max_output_tokens": 8192,
            "enabled": True,
            "sort_order": 0,
        },
    )


class Migration(migrations.Migration):
    dependencies = [("gateway", "0001_initial")]

    operations = [migrations.RunPython(create_demo_model, migrations.RunPython.noop)]
