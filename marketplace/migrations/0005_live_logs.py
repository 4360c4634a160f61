from django.db import migrations, models


def number_existing_lines(apps, schema_editor):
    """Give lines written before sequence numbers existed their order within each job."""
    LogLine = apps.get_model("marketplace", "LogLine")
    Job = apps.get_model("marketplace", "Job")
    for job_id in LogLine.objects.values_list("job_id", flat=True).distinct():
        seq = 0
        for line in LogLine.objects.filter(job_id=job_id).order_by("id"):
            seq += 1
            LogLine.objects.filter(pk=line.pk).update(seq=seq)
        Job.objects.filter(pk=job_id).update(log_seq=seq)


class Migration(migrations.Migration):

    dependencies = [
        ("marketplace", "0004_offer_search_large_gpu"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="log_seq",
            field=models.PositiveIntegerField(default=0, help_text="Last LogLine.seq."),
        ),
        migrations.AddField(
            model_name="logline",
            name="seq",
            field=models.PositiveIntegerField(default=0, help_text="Per job, gap-free, for resync."),
            preserve_default=False,
        ),
        migrations.RunPython(number_existing_lines, migrations.RunPython.noop),
    ]
