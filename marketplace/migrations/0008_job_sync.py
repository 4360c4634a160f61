from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('marketplace', '0007_comm_bytes'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='sync',
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.RemoveConstraint(
            model_name='assignment',
            name='assignment_rank_unique',
        ),
        migrations.AddConstraint(
            model_name='assignment',
            constraint=models.UniqueConstraint(condition=models.Q(('status__in', ['failed', 'lost', 'cancelled']), _negated=True), fields=('job', 'attempt', 'node_rank'), name='assignment_live_rank_unique'),
        ),
    ]
