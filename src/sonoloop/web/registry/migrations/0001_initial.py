"""The registry's models were the learning app's (tables learning_modelversion and
learning_modeldecision); this moves them in Django's state only — the tables and their rows stay."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ('learning', '0002_evaluated_at'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(database_operations=[], state_operations=[
                migrations.CreateModel(
                    name='ModelVersion',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=128, unique=True)),
                        ('folder', models.CharField(help_text='The model folder (absolute path).', max_length=1000)),
                        ('origin', models.CharField(choices=[('shipped', 'shipped'), ('retrained', 'retrained'), ('imported', 'imported')], max_length=10)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('is_active', models.BooleanField(default=False, help_text='The version that segments arriving echoes.')),
                        ('heldout_dice', models.JSONField(default=dict, help_text='Mean Dice per structure on the locked held-out set.')),
                        ('annotated_dice', models.JSONField(default=dict, help_text='Mean Dice per structure on the approved annotations.')),
                        ('evaluated_at', models.DateTimeField(blank=True, help_text='When the held-out evaluation (a task queued at registration) finished; promotion waits for it.', null=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('parent', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='children', to='registry.modelversion')),
                    ],
                    options={
                        'db_table': 'learning_modelversion',
                        'ordering': ['-created_at', '-id'],
                    },
                ),
                migrations.CreateModel(
                    name='ModelDecision',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('action', models.CharField(choices=[('promoted', 'promoted'), ('forced', 'forced'), ('rejected', 'rejected'), ('rolled back', 'rolled back'), ('registered', 'registered')], max_length=12)),
                        ('at', models.DateTimeField(auto_now_add=True)),
                        ('margin', models.FloatField(blank=True, null=True)),
                        ('numbers', models.JSONField(default=dict, help_text='Held-out Dice of the candidate and of the active version.')),
                        ('reason', models.TextField(blank=True)),
                        ('user', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('previous', models.ForeignKey(blank=True, help_text='The version that was active when the decision was made.', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='registry.modelversion')),
                        ('version', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='decisions', to='registry.modelversion')),
                    ],
                    options={
                        'db_table': 'learning_modeldecision',
                        'ordering': ['-at', '-id'],
                    },
                ),
                migrations.AddConstraint(
                    model_name='modelversion',
                    constraint=models.UniqueConstraint(condition=models.Q(('is_active', True)), fields=('is_active',), name='one_active_model'),
                ),
        ]),
    ]
