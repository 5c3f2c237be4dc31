"""ModelVersion and ModelDecision now belong to the registry app (same tables): Django's state
only; the retraining runs' foreign keys point at the same rows."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('learning', '0002_evaluated_at'),
        ('registry', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(database_operations=[], state_operations=[
            migrations.RemoveField(
                model_name='modelversion',
                name='created_by',
            ),
            migrations.RemoveField(
                model_name='modelversion',
                name='parent',
            ),
            migrations.AlterField(
                model_name='retrainingjob',
                name='parent',
                field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='retraining_jobs', to='registry.modelversion'),
            ),
            migrations.AlterField(
                model_name='retrainingjob',
                name='result',
                field=models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='retraining_job', to='registry.modelversion'),
            ),
            migrations.DeleteModel(
                name='ModelDecision',
            ),
            migrations.DeleteModel(
                name='ModelVersion',
            ),
        ]),
    ]
