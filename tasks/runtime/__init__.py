"""What tasks and flows build at run time, one module per thing made. Tasks receive configs and
URIs (hashable, cacheable) and build live objects (clients, file systems) inside the task, so
nothing unhashable ever becomes a task input.

- store.py: the run's RunStore, and the storage of the response cache
- clients.py: a role's LLM client, and its usage as a record
- secrets.py: API keys (environment, else a Prefect Secret block)
- progress.py: the Prefect progress artifacts of long stages and of Batch API calls
- cancel.py: the flows' on-cancellation hook (cancel the run's provider batches)
- logs.py: lion_core's log records in the Prefect run logs
- retry.py: when a failed task is retried
"""
