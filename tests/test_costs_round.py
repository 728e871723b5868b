"""Batch mode, `lion estimate` and the budget on a whole round (Prefect's test harness, the
offline world over HTTP, the official `openai` client): the world's /stats count what was sent.

- a round with every role in batch mode gives the pools of a sync round with the same seed,
  and sends exactly the requests `lion estimate` counted for round 1;
- a budget smaller than the first stage's estimate stops the round before anything is sent;
  the run resumed with a larger budget completes.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import small_config
from typer.testing import CliRunner

from lion_core.errors import BudgetExceeded
from lion_core.run.store import RunStore

pytestmark = pytest.mark.slow
ROLES = ("teacher", "referee", "generator")
FAST_POLL = {"batch.poll_seconds": 0.05, "batch.poll_max_seconds": 0.2}


def test_batch_round_sends_the_estimate_and_matches_sync(prefect_harness, tmp_path, offline_server):
    from flows.cli import app
    from flows.round import lion_round

    world = offline_server(judge_noise=0.0, batch_delay=0.1)
    batch = small_config(
        tmp_path / "batch",
        **{f"{r}.base_url": world.base_url for r in ROLES},
        **{f"{r}.mode": "batch" for r in ROLES},
        **{f"{r}.{k}": v for r in ROLES for k, v in FAST_POLL.items()},
    )
    path = tmp_path / "batch.yaml"
    batch.to_yaml(path)
    out = CliRunner().invoke(app, ["estimate", "-c", str(path), "--json"])
    assert out.exit_code == 0, out.output
    estimate = json.loads(out.output)
    assert estimate["requests"] == {"teacher": 24, "referee": 48, "generator": 18}
    assert set(estimate["cost_usd"]) >= {"sync", "batch"} and estimate["tokens"]["teacher"]

    summary = lion_round(batch, 1)
    stats = world.stats()
    for role in ROLES:
        assert stats[role]["batches"] >= 1, (role, stats[role])
        assert stats[role]["requests"] == stats[role]["batch_lines"]  # nothing sent one by one
        assert stats[role]["answered_bodies"] == estimate["requests"][role], (role, stats[role])
        assert stats[role]["answered_twice"] == 0
    assert summary.usage["teacher"].requests == 24
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # the batch polls' progress artifacts
        progress = [a for a in client.read_artifacts() if a.type == "progress"]
    assert any(a.data == 100.0 and "teacher" in (a.description or "") for a in progress)

    # The same seed in sync mode, on its own world and root: the same pools.
    other = offline_server(judge_noise=0.0)
    sync = small_config(tmp_path / "sync", **{f"{r}.base_url": other.base_url for r in ROLES})
    lion_round(sync, 1)
    a, b = RunStore.open(batch.storage.root), RunStore.open(sync.storage.root)
    pd.testing.assert_frame_equal(a.read(1, "referee"), b.read(1, "referee"))
    for name in ("train_pool", "cache_pool"):
        pd.testing.assert_frame_equal(a.read(2, name), b.read(2, name))
    assert other.stats()["teacher"]["batches"] == 0


def test_budget_stops_before_sending_and_resume_completes(
    prefect_harness, tmp_path, offline_server
):
    from flows.round import lion_round
    from lion_core.ops.estimate import estimate_run

    world = offline_server(judge_noise=0.0)
    priced = {"pricing": {"offline-": {"input": 100.0, "output": 100.0}}}
    cfg = small_config(tmp_path / "run", **{f"{r}.base_url": world.base_url for r in ROLES})
    cfg = cfg.with_overrides(priced)
    teacher = estimate_run(cfg).rounds[1]["teacher"].cost_sync
    poor = cfg.with_overrides({"budget_usd": teacher / 2})
    state = lion_round(poor, 1, return_state=True)
    assert state.is_failed()
    with pytest.raises(BudgetExceeded, match=r"teacher: teacher answers \(24 request"):
        state.result()
    assert world.stats() == {}  # nothing sent

    rich = cfg.with_overrides({"budget_usd": 1000.0})
    summary = lion_round(rich, 1)
    assert summary.new_instructions > 0
    assert 0 < summary.usage["teacher"].cost_usd <= teacher
    assert summary.flat()["cost_usd"] == pytest.approx(
        sum(u.cost_usd for u in summary.usage.values())
    )
