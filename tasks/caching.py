"""Content-addressed caching for lion tasks.

Prefect's default cache policy includes the flow run's id, so it hits on a UI *Retry* of the same
run and misses on any new run. Our keys leave the run id out: a task's key is its name, a version,
the run root, the digest of the config's non-operational fields, and the *content* of its inputs
(an ArtifactRef counts by its sha256). There is no per-task list of config sections to keep in
step: run.json already refuses any non-operational change on a run root, so the whole digest is
as precise and cannot drift. `lion resume` and a re-submitted run hit every finished task.

Results are persisted in the run's own storage (`<root>/prefect-results/`), local or S3, so a
retry on a fresh Kubernetes pod finds them: the entry points (`flows.common.use_run_storage`) set
it on the flow, and its tasks inherit it; they are JSON records of our own types, and any other
record is refused (tasks/results.py). Parameters named in RUNTIME_PARAMS (the offline
server's URL, which changes every run) never enter a key; a renamed parameter enters it under the
name it had before (KEYED_AS), so results cached before the rename are still found.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefect import task
from pydantic import BaseModel

from lion_core.config import LionConfig
from lion_core.run.records import Record
from lion_core.run.schemas import ArtifactRef

# Bump to invalidate every cached task result after a semantic change. 3: results are
# 'lion-json' records (the pickles of version 2 are never looked up, so never refused).
KEY_VERSION = "3"
RUNTIME_PARAMS = frozenset({"offline_url"})
# Renamed task parameters, {new name: the name the key used before}. A parameter's name is part of
# the key: without this, a rename would re-run every finished task of every existing run root.
KEYED_AS = {
    # the Cache Pool's ArtifactRef (referee-reviews, hard-and-easy, uniform-split,
    # student-answers): `cache` until issue 20, a word that also meant the response cache
    "cache_pool": "cache",
}


def digest(value: Any) -> Any:
    """A JSON-able stand-in for a task input: content, not identity."""
    if isinstance(value, ArtifactRef):
        return {"artifact": value.name, "round": value.round, "sha256": value.sha256}
    if isinstance(value, LionConfig):
        raise TypeError("pass config through the `config` parameter")
    if isinstance(value, Record):
        return value.key_dump()  # without fields added since, while unset: keys stay stable
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): digest(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [digest(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot hash task input of type {type(value).__name__}")


def task_key(context: Any, parameters: dict[str, Any]) -> str:
    """A cache_key_fn: the task's name and version, the run root, the config digest, and the
    content of every other input (under its name as KEYED_AS has it)."""
    config: LionConfig = parameters["config"]
    payload = {
        "task": context.task.name,
        "version": f"{KEY_VERSION}.{context.task.version or 0}",
        "storage": config.storage.root,
        "config": config.digest(),
        "inputs": {
            KEYED_AS.get(name, name): digest(value)
            for name, value in sorted(parameters.items())
            if name != "config" and name not in RUNTIME_PARAMS
        },
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def lion_task(
    name: str,
    *,
    version: str = "1",
    retries: int = 0,
    retry_delay_seconds: float = 10,
    **options: Any,
):
    """Declare a lion task: content-keyed cache (`task_key`), result persisted in the storage
    of the flow that runs it. Bump `version` when a task's output changes meaning."""
    return task(
        name=name,
        version=version,
        cache_key_fn=task_key,
        persist_result=True,
        cache_result_in_memory=False,
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        **options,
    )
