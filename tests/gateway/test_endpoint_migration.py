"""Migration gateway.0005 gives every existing model one endpoint from its single upstream."""

from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def test_each_model_s_upstream_becomes_its_endpoint(transactional_db):
    executor = MigrationExecutor(connection)
    executor.migrate([("gateway", "0004_model_kind")])
    old = executor.loader.project_state([("gateway", "0004_model_kind")]).apps
    old_model = old.get_model("gateway", "Model")
    old_model.objects.all().delete()
    old_model.objects.create(
        name="served",
        upstream_kind="openai_compatible",
        upstream_base_url="http://gpu.internal:8000/v1",
        upstream_model="internal-name",
        upstream_key_encrypted="gAAAA-stored-token",
    )
    old_model.objects.create(name="demo", upstream_kind="demo")
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    from gateway.models import Model

    served = Model.objects.get(name="served").endpoints.get()
    assert (served.kind, served.base_url, served.upstream_model, served.api_key_encrypted) == (
        "openai_compatible",
        "http://gpu.internal:8000/v1",
        "internal-name",
        "gAAAA-stored-token",
    )
    assert (served.priority, served.weight, served.enabled) == (0, 1, True)
    demo = Model.objects.get(name="demo").endpoints.get()
    assert (demo.kind, demo.base_url) == ("demo", "")
