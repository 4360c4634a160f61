from django.db import migrations, models


class Migration(migrations.Migration):
    """Separate from 0005: PostgreSQL refuses to alter a table in the transaction that just
    rewrote its rows (pending trigger events)."""

    dependencies = [
        ("marketplace", "0005_live_logs"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="logline", name="logline_job"),
        migrations.AlterModelOptions(name="logline", options={"ordering": ["job_id", "seq"]}),
        migrations.AddConstraint(
            model_name="logline",
            constraint=models.UniqueConstraint(fields=("job", "seq"), name="logline_seq_unique"),
        ),
    ]
