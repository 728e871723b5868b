"""A run's identity: `run.json` at its root binds the root to one configuration.

Snapshots are immutable, so a root must not be reused with a configuration that would produce
different ones. Fields that change how work is done but not what it produces (endpoint URLs —
answers are keyed by model name, not by server —, concurrency, timeouts, GPU counts, the number of
rounds, fault injection) may differ between invocations; any other difference is refused with the
differing paths named — once the root holds a snapshot. A run that failed before committing
anything (a missing or malformed initial data file, say) binds nothing: run again with the
corrected config and run.json is rewritten.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
from datetime import UTC, datetime
from typing import Any

from lion_core.config import LionConfig, is_operational
from lion_core.errors import ConfigError
from lion_core.run import layout
from lion_core.run.store import RunStore

log = logging.getLogger(__name__)

PACKAGES = (
    "lion-distill",
    "torch",
    "transformers",
    "deepspeed",
    "prefect",
    "openai",
    "pandas",
    "pyarrow",
    "s3fs",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


# Not a difference between a root's recorded config and a run on it: the root is where run.json
# was found (a copied or moved root records where it was created; `recorded_config`).
SAME_RUN_ANYWHERE = frozenset({"storage.root"})


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted paths whose values differ and that are not operational."""
    a, b = _flatten(old), _flatten(new)
    return sorted(
        p
        for p in set(a) | set(b)
        if a.get(p) != b.get(p) and not is_operational(p) and p not in SAME_RUN_ANYWHERE
    )


def check_run(config: LionConfig) -> tuple[RunStore, list[str] | None]:
    """The run's store and how `config` differs from the one its run.json records (None: no
    run.json yet); a ConfigError if they differ and the root already holds committed work.
    Writes nothing: a command checks a root with it before it holds the root's lease."""
    store = RunStore.open(config.storage.root, config.storage.options)
    if not store.has_run_info():
        return store, None
    recorded = recorded_config(store.uri(), config.storage.options).model_dump(mode="json")
    diffs = config_differences(recorded, config.model_dump(mode="json"))
    committed = store.committed() if diffs else []
    if committed:
        raise ConfigError(
            f"run root {store.storage.uri()} was created with a different configuration; "
            f"these fields differ: {', '.join(diffs)}; it already holds "
            f"{', '.join(committed[:4])}. Use a new storage.root, or the recorded config "
            "(lion resume reads it from run.json)."
        )
    return store, diffs


def open_run(config: LionConfig) -> RunStore:
    """The run's store; writes run.json on first use and checks the config against it after
    (while nothing is committed, a different config replaces the recorded one). Call it only
    while holding the root's lease (`lion_core.run.lease.run_lease`): a run refused by the
    lease must not rewrite the holder's run.json."""
    store, diffs = check_run(config)
    current = config.model_dump(mode="json")
    rebind = diffs is not None
    if rebind:
        if not diffs:
            return store
        log.warning(
            "run root %s holds no snapshot yet: its recorded config is replaced (%s differ)",
            store.storage.uri(),
            ", ".join(diffs),
        )
    store.write_run_info(
        {
            "config": current,
            "versions": package_versions(),
            "started_at": datetime.now(UTC).isoformat(),
        },
        overwrite=rebind,
    )
    return store


def recorded_config(root: str, options: dict[str, Any] | None = None) -> LionConfig:
    """The config stored in a run's run.json (what `lion resume <root>` runs with), working on
    `root` — the root as the user typed it. run.json records the root the run was created
    under; when that names another place from here (the root was copied or moved, or it was
    recorded relative and this is another working directory), the run goes on where run.json
    was found, with a warning: it never writes into the recorded place instead."""
    store = RunStore.open(root, options)
    info = store.read_run_info()
    data = info.get("config")
    if not isinstance(data, dict):
        raise ConfigError(f"{store.uri(layout.RUN_INFO)}: no 'config' mapping")
    cfg = LionConfig.from_dict(data, source=store.uri(layout.RUN_INFO))
    if options:
        cfg = cfg.with_overrides({"storage.options": options})
    recorded = cfg.storage.root
    here = RunStore.open(recorded, cfg.storage.options).uri()
    if here != store.uri():
        log.warning(
            "%s records the run root %r, which is %s from here; working on %s, where run.json "
            "is (finished tasks are recomputed from its snapshots, its cached answers are "
            "reused: nothing is paid again)",
            store.uri(layout.RUN_INFO),
            recorded,
            here,
            store.uri(),
        )
        cfg = cfg.with_overrides({"storage.root": store.uri()})
    return cfg
