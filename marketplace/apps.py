from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "ComputeMesh marketplace"

    def ready(self):
        # Imported here, not at the top: they import the models, which exist only once the app
        # registry is ready. checks registers the deployment checks on import.
        from . import checks, job_states, logs, metrics  # noqa: F401
        from .chain import deploy
        from .services import chain_events, escrow_events, live

        # Every process times its Celery tasks and binds their ids for the logs.
        metrics.celery_signals_connected()
        logs.celery_signals_connected()
        # The state machine says a job changed; the live views tell its watchers.
        job_states.job_changed.connect(live.on_job_changed, dispatch_uid="live.on_job_changed")
        # The chain's indexer reads the escrow's and the stake contract's events for the services.
        chain_events.connect()
        # A chain that is gone: its escrows are marked for staff before the chain is forgotten.
        deploy.chain_gone.connect(escrow_events.on_chain_gone, dispatch_uid="escrow_events.on_chain_gone")
