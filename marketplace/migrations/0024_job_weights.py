# Written for Dataset.kind "weights" and Job.weights (a fine-tune's input weights, issue 16);
# by hand, as makemigrations would pick up other helpers' uncommitted model changes.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('marketplace', '0023_determinism_check'),
    ]

    operations = [
        migrations.AlterField(
            model_name='dataset',
            name='kind',
            field=models.CharField(choices=[('csv', 'CSV table'), ('zip', 'Zip of files'), ('weights', 'Model weights')], default='csv', max_length=8),
        ),
        migrations.AddField(
            model_name='job',
            name='weights',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name='weights_jobs', to='marketplace.dataset'),
        ),
    ]
