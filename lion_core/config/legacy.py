"""Config keys that were renamed or moved, and how a config that still uses them loads.

A config written before a rename — a YAML file, a `--set` override, the run form's `overrides`, a
run root's run.json, a flow run's parameters — keeps loading: each old key is put in its new place,
with one warning per load naming every old key and its new one (a DeprecationWarning, and a
logged warning, which a user of the CLI sees). Only operational fields were renamed, so the
config's digest — part of every task's cache key — is the same either way, and a run root written
before the rename resumes with every task cached.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

from lion_core.errors import ConfigError

log = logging.getLogger("lion_core.config")

ROLES = ("teacher", "referee", "judge", "generator")

# An endpoint's Batch API fields moved under `batch:`; batch_size (the response cache's Parquet
# shard size, never a Batch API setting) became cache_shard_size.
ENDPOINT_RENAMES = {
    "batch_size": "cache_shard_size",
    "batch_max_requests": "batch.max_requests",
    "batch_max_bytes": "batch.max_bytes",
    "batch_poll_seconds": "batch.poll_seconds",
    "batch_poll_max_seconds": "batch.poll_max_seconds",
    "batch_resubmits": "batch.resubmits",
    "cancel_batches_on_cancel": "batch.cancel_on_cancel",
}

# Old dotted path -> new dotted path, from the top of the config.
RENAMED: dict[str, str] = {
    **{f"{role}.{old}": f"{role}.{new}" for role in ROLES for old, new in ENDPOINT_RENAMES.items()},
    "student.generation.server.batch_size": "student.generation.server.cache_shard_size",
}

_MISSING = object()


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _pop(data: dict[str, Any], dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    node = _get(data, ".".join(parents)) if parents else data
    return node.pop(leaf)


def _put(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


# The renamed keys already logged by this process: a config is often loaded more than once (a
# resumed run reads run.json twice), and once is enough to see which keys to rename.
_logged: set[tuple[tuple[str, str], ...]] = set()


def warn_renamed(pairs: list[tuple[str, str]], source: str | None) -> None:
    """One warning naming every old key found and its new one: a DeprecationWarning each time,
    and a logged warning the first time this process meets these keys."""
    if not pairs:
        return
    message = "; ".join(f"{old} is deprecated: use {new}" for old, new in pairs)
    if source:
        message = f"{source}: {message}"
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    if tuple(pairs) not in _logged:
        _logged.add(tuple(pairs))
        log.warning(message)


def _conflict(old: str, new: str, source: str | None) -> ConfigError:
    where = f"{source}: " if source else ""
    return ConfigError(
        f"{where}{old} (deprecated) and {new} are both set, to different values: keep only {new}"
    )


def upgrade_keys(data: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """`data` (a config as a mapping) with every renamed key in its new place, and a warning
    naming them; `data` itself is not changed. Both an old key and its new one, with different
    values, is a ConfigError."""
    found = [old for old in RENAMED if _get(data, old) is not _MISSING]
    if not found:
        return data
    data = copy.deepcopy(data)
    for old in found:
        new = RENAMED[old]
        value = _pop(data, old)
        present = _get(data, new)
        if present is not _MISSING and present != value:
            raise _conflict(old, new, source)
        _put(data, new, value)
    warn_renamed([(old, RENAMED[old]) for old in found], source)
    return data


def upgrade_overrides(overrides: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Dotted-path overrides ({"teacher.batch_size": 64}) with every renamed path replaced by
    its new one, and a warning naming them."""
    out: dict[str, Any] = {}
    pairs: list[tuple[str, str]] = []
    for dotted, value in overrides.items():
        new = RENAMED.get(dotted)
        if new is None:
            if dotted in out and out[dotted] != value:
                old = next(o for o, n in RENAMED.items() if n == dotted)
                raise _conflict(old, dotted, source)
            out[dotted] = value
            continue
        if new in out and out[new] != value:
            raise _conflict(dotted, new, source)
        out[new] = value
        pairs.append((dotted, new))
    warn_renamed(pairs, source)
    return out
