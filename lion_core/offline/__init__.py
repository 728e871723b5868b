"""The offline task world: the embedded default teacher, referee and generator.

`world` generates instruction families with exact answers, and the held-out evaluation set;
`roles` answers as teacher, referee (and judge) and generator; `server` serves them over an
OpenAI-compatible HTTP API on loopback (imported on first use, so `world` stays light).
"""

from typing import Any

from lion_core.offline.world import (
    FAMILIES,
    Instance,
    heldout_instances,
    heldout_questions,
    make_instance,
    seed_instances,
    seed_pool,
    solve,
)

__all__ = [
    "FAMILIES",
    "Instance",
    "OfflineServer",
    "OfflineWorld",
    "heldout_instances",
    "heldout_questions",
    "make_instance",
    "seed_instances",
    "seed_pool",
    "serve",
    "solve",
]


def __getattr__(name: str) -> Any:
    if name in ("OfflineServer", "OfflineWorld", "serve"):
        from lion_core.offline import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
