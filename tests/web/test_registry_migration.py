"""The migrations: moving the model versions from the learning app to the registry app kept
every row, and no model changed without its migration."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


@pytest.mark.django_db(transaction=True)
def test_versions_decisions_and_runs_made_before_the_registry_app_survive_the_move():
    executor = MigrationExecutor(connection)
    before = [("learning", "0002_evaluated_at"), ("registry", None)]
    executor.migrate(before)
    old = executor.loader.project_state([before[0]]).apps
    version = old.get_model("learning", "ModelVersion").objects.create(name="v1", folder="/m/v1", origin="shipped",
                                                                        is_active=True, heldout_dice={"LV endo": 0.9})
    old.get_model("learning", "ModelDecision").objects.create(version=version, action="registered", reason="r")
    old.get_model("learning", "RetrainingJob").objects.create(parent=version, name="v2", strategy="equal")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    from sonoloop.web.learning.models import RetrainingJob
    from sonoloop.web.registry.models import ModelDecision, ModelVersion

    moved = ModelVersion.objects.get(name="v1")
    assert moved.is_active and moved.heldout_dice == {"LV endo": 0.9}
    assert ModelDecision.objects.get().version == moved
    assert RetrainingJob.objects.get().parent == moved


@pytest.mark.django_db
def test_the_migrations_describe_the_models_as_they_are():
    """A model changed without its migration leaves an installed archive's tables behind the
    code, and every `migrate` there warns that the models have unmigrated changes."""
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
