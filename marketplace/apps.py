from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "ComputeMesh marketplace"

    def ready(self):
        # checks: registers the deployment checks on import.
        from . import checks, logs, metrics  # noqa: F401

        # Every process times its Celery tasks and binds their ids for the logs.
        metrics.celery_signals_connected()
        logs.celery_signals_connected()
