"""The Celery tasks' names, in one place. The services enqueue by name (they never import
`workers/`, whose tasks import them), the tasks in `workers/tasks*.py` register under these
names, and the beat schedule (settings.CELERY_BEAT_SCHEDULE) runs some of them. The queue a
task goes to follows its module (webapp/celery.py routes by prefix). A leaf: no imports."""

# workers/tasks.py: matching and supervision (the default queue).
MATCH_JOB = "workers.tasks.match_job"
REMATCH_WAITING = "workers.tasks.rematch_waiting"
EXPLAIN_WAIT = "workers.tasks.explain_wait"
HEARTBEAT_WATCHDOG = "workers.tasks.heartbeat_watchdog"
ATTEMPT_FAILURE_SETTLE = "workers.tasks.attempt_failure_settle"
ANNOUNCE_JOBS = "workers.tasks.announce_jobs"
BUDGET_WATCH = "workers.tasks.budget_watch"
NODE_REPUTATION = "workers.tasks.node_reputation"
REPUTATIONS_UPDATE = "workers.tasks.reputations_update"

# workers/tasks_dispatch.py: the dispatch queue.
DISPATCH_ASSIGNMENT = "workers.tasks_dispatch.dispatch_assignment"

# workers/tasks_chain.py: the chain queue (a single sender).
CHAIN_SYNC = "workers.tasks_chain.chain_sync"
SETTLE_PENDING = "workers.tasks_chain.settle_pending"
DISPUTE_SLASH = "workers.tasks_chain.dispute_slash"

# workers/tasks_verify.py: the verify queue.
VERIFY_ATTEMPT = "workers.tasks_verify.verify_attempt"
CHECKPOINT_VALIDATE = "workers.tasks_verify.checkpoint_validate"
CHECKPOINT_REPLAY = "workers.tasks_verify.checkpoint_replay"
VERIFY_STALE = "workers.tasks_verify.verify_stale"
DETERMINISM_CHECK = "workers.tasks_verify.determinism_check"
