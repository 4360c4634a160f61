# Written for the model in marketplace/models/determinism.py (makemigrations would have
# picked up another helper's uncommitted field on Node in the same run).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('marketplace', '0022_log_line_rank_stream'),
    ]

    operations = [
        migrations.CreateModel(
            name='DeterminismCheck',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('key', models.CharField(help_text='SHA-256 of bundle SHA-256, dataset, params and world size.', max_length=64, unique=True)),
                ('dataset_ref', models.CharField(blank=True, max_length=64)),
                ('params', models.JSONField(default=dict)),
                ('world_size', models.PositiveIntegerField()),
                ('status', models.CharField(choices=[('pending', 'Waiting for the verifier'), ('running', 'Checking'), ('done', 'Checked'), ('error', 'Could not be checked')], default='pending', max_length=16)),
                ('deterministic', models.BooleanField(null=True)),
                ('steps', models.PositiveIntegerField(default=0)),
                ('rel_l2', models.FloatField(blank=True, null=True)),
                ('seconds', models.FloatField(blank=True, help_text='What the check cost.', null=True)),
                ('error', models.TextField(blank=True)),
                ('runs', models.PositiveSmallIntegerField(default=0)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('started_at', models.DateTimeField(blank=True, null=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('bundle', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='marketplace.codebundle')),
                ('dataset', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='marketplace.dataset')),
            ],
        ),
    ]
