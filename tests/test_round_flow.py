"""The round DAG through Prefect (its test harness: a real API server on SQLite), on the offline
world: one full round (its report opened in Chromium), and a round that fails after the referee
stage and is resumed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import chromium, small_config

from lion_core.run.store import RunStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_round(prefect_harness, tmp_path_factory):
    """ONE uninterrupted round of small_config on the embedded offline world: its config and
    final state."""
    from flows.round import lion_round

    # the demo's evaluation set: the decontamination gate checks seeds and new instructions
    cfg = small_config(
        tmp_path_factory.mktemp("one-round") / "run", **{"evaluation.sets": ["offline"]}
    )
    return cfg, lion_round(cfg, 1, return_state=True)


def test_one_round_on_the_offline_world(one_round):
    from prefect.client.orchestration import get_client

    cfg, state = one_round
    summary = state.result()

    store = RunStore.open(cfg.storage.root)
    for name in (
        "train_pool",
        "cache_pool",
        "teacher_answers",
        "student_answers",
        "referee",
        "hard",
        "easy",
        "generated",
    ):
        frame = pd.read_parquet(store.storage.uri(f"round=1/{name}.parquet"))
        assert frame.shape[0] == store.ref(1, name).rows
    teacher = store.read(1, "teacher_answers")
    assert (teacher["status"] == "ok").all() and len(teacher) == 24
    referee = store.read(1, "referee")
    assert len(referee) == 24
    assert summary.hard + summary.easy + summary.unscored == 24
    assert summary.teacher_score > summary.student_score
    assert 0 <= summary.student_to_teacher < 1
    new = summary.new_instructions
    assert 0 < new <= 12
    assert store.ref(2, "train_pool").rows == 24 + new
    assert store.ref(2, "cache_pool").rows == new
    assert summary.usage["teacher"].requests == 24
    assert summary.usage["referee"].requests >= 48  # two orders (plus re-asks, if any)
    assert summary.student.endswith("round=1/student")
    # generation diversity: in the summary (and summary.json), by offline family
    diversity = summary.diversity
    assert diversity is not None and diversity.kept == new
    assert (
        diversity.category_basis == "offline family" and sum(diversity.categories.values()) == new
    )
    assert 0 <= diversity.dropped_share < 1 and diversity.kept_max_rouge.max <= 0.7
    assert store.read_round_summary(1)["diversity"]["kept"] == new
    # the decontamination gate: the offline world's held-out set passes everything untouched
    assert summary.seeds_decontamination.checked == 24
    assert summary.decontamination.checked > 0 and summary.flat()["contaminated"] == 0
    assert summary.decontamination.by_set == {"offline": 0}
    assert store.ref(1, "contaminated_seeds").rows == 0
    # each judged candidate's nearest text (the report's lineage): a not_novel one is above
    # the novelty threshold against the pool or a kept instruction, a kept one is not
    nearest = store.read(1, "nearest")
    judged = store.read(1, "generated").query("status in ['kept', 'not_novel', 'duplicate']")
    assert sorted(nearest["request_key"]) == sorted(judged["request_key"])
    kept = nearest["status"] == "kept"
    assert (nearest.loc[kept, "rouge_l"] <= 0.7).all()
    assert (nearest.loc[nearest["status"] == "not_novel", "rouge_l"] > 0.7).all()
    assert nearest["nearest_in"].isin(["train pool", "new", "candidate"]).all()

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    keys = {a.key for a in artifacts}
    assert {"flow-test-round-1", "flow-test-round-1-hard-sample"} <= keys
    # this round's own (the session's harness holds other tests' rounds of the same name)
    mine = [a for a in artifacts if a.flow_run_id == state.state_details.flow_run_id]
    table = next(a for a in mine if a.key == "flow-test-round-1").data
    report = store.uri("round=1/report.html")
    assert Path(report).is_file() and report in str(table)  # the report, named in the artifact
    sample = next(a for a in mine if a.key == "flow-test-round-1-hard-sample").data
    assert Path(report).resolve().as_uri() in sample
    assert "novelty_dropped_share" in str(table) and "kept_max_rouge_l" in str(table)
    assert "teacher_refusal_share" in str(table)  # data health, in the round's artifact
    assert summary.teacher_health is not None and summary.teacher_health.answers == 24
    assert summary.teacher_health.refusals == 0
    # ... and the new instructions' distance from the seeds' domain (the offline world's own)
    assert "far_from_seeds_share" in str(table)
    domain = summary.generated_health
    assert domain is not None and domain.new == summary.new_instructions > 0
    assert domain.seeds == 24 and domain.far_share < cfg.data_health.far_warn_share

    # The library's progress lines (lion_core.llm) are in the run's logs, not only the console.
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(limit=200)
    assert any(log.name == "lion_core.llm" and "teacher answers" in log.message for log in logs)

    # Runs named for what they do (the UI and the console show these names).
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run_id).name == "round-1"
    names = set(_task_states(run_id, by="run name"))
    expected = {"referee-order-1", "referee-order-2", "candidates-hard", "candidates-easy"}
    assert expected | {"student-round-1", "teacher-answers-round-1"} <= names, names

    # Long stages showed their progress as Prefect progress artifacts, one per stage, each at
    # 100% in the end: the teacher's, both referee orders', the generator's, the student's.
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )

    progress = ArtifactFilter(
        type=ArtifactFilterType(any_=["progress"]),
        flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
    )
    with get_client(sync_client=True) as client:
        shown = client.read_artifacts(artifact_filter=progress)
    stages = {a.description.split(":")[0] for a in shown}
    assert {"teacher", "referee", "generator", "student"} <= stages, [a.description for a in shown]
    assert all(float(a.data) == 100.0 for a in shown), [(a.description, a.data) for a in shown]
    assert any(a.description.startswith("student: answers: 24 to answer") for a in shown)
    assert sum(a.description.startswith("referee:") for a in shown) >= 2  # an order each, re-asks


@pytest.mark.browser
def test_the_round_report_in_a_browser(one_round, tmp_path):
    """round=1/report.html in Chromium, offline (every request but the file's refused): one
    category's hard instructions with both orders' scores, a seed's generated children, a
    dropped candidate's nearest neighbour. Screenshots in the test's tmp dir."""
    import re

    cfg, _ = one_round
    report = Path(cfg.storage.root) / "round=1" / "report.html"
    page_text = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page_text)  # no network
    assert "<link" not in page_text and "@import" not in page_text
    with chromium() as browser:  # closed before the next test runs a flow (helpers.chromium)
        asked = _browse_report(browser, report, cfg, tmp_path)
    assert all(url.startswith("file:") for url in asked), asked


def _browse_report(browser, report: Path, cfg, tmp_path: Path) -> list[str]:
    """The round report's walk-through (test_the_round_report_in_a_browser); returns every URL
    the page asked for."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    asked = []

    def offline(route):
        asked.append(route.request.url)
        return route.continue_() if route.request.url.startswith("file:") else route.abort()

    page.route("**/*", offline)
    rows = "#judged tbody tr:not([hidden])"
    try:
        page.goto(report.as_uri())
        # a category with a hard instruction the generator wrote children from
        cells = page.eval_on_selector_all(
            "#judged tbody tr",
            """rows => rows.map(r => [r.cells[1].textContent, r.cells[2].textContent,
                                      r.querySelector('a.children') !== null])""",
        )
        category = next(c for c, verdict, linked in cells if verdict == "hard" and linked)
        page.select_option("#category", category)
        page.select_option("#verdict", "hard")
        shown = page.eval_on_selector_all(
            rows, "rows => rows.map(r => [r.cells[1].textContent, r.cells[2].textContent])"
        )
        assert shown and all(row == [category, "hard"] for row in shown), shown
        heads = page.eval_on_selector_all("#judged thead th", "hs => hs.map(h => h.textContent)")
        scores = [
            heads.index(f"order {o}: {who}") for o in (1, 2) for who in ("teacher", "student")
        ]
        row = page.locator(rows).filter(has=page.locator("a.children")).first
        values = [float(row.locator("td").nth(i).inner_text()) for i in scores]
        assert all(1 <= v <= 10 for v in values), values
        assert values[0] + values[2] - values[1] - values[3] >= 2 * cfg.discrimination.tau
        page.screenshot(path=str(tmp_path / "report-hard.png"))

        # follow the seed to its generated children
        link = row.locator("a.children")
        seed, count = link.get_attribute("data-seed"), int(link.inner_text().split()[0])
        link.click()
        assert page.input_value("#seed-filter") == seed
        children = page.eval_on_selector_all(
            "#lineage tbody tr:not([hidden])", "rows => rows.map(r => r.cells[0].textContent)"
        )
        assert children == [seed] * count
        page.screenshot(path=str(tmp_path / "report-lineage.png"))

        # a dropped candidate shows its nearest neighbour and their ROUGE-L
        page.click("#seed-clear")
        page.select_option("#status", "dropped")
        lineage_heads = page.eval_on_selector_all(
            "#lineage thead th", "hs => hs.map(h => h.textContent)"
        )
        dropped = page.eval_on_selector_all(
            "#lineage tbody tr:not([hidden])",
            "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))",
        )
        assert dropped, "no dropped candidate in round 1"
        first = dict(zip(lineage_heads, dropped[0], strict=True))
        assert first["status"] in ("not_novel", "duplicate", "contaminated"), first
        assert first["nearest"] and first["nearest in"], first
        if first["status"] != "contaminated":  # the gate may match on a shared n-gram alone
            assert float(first["ROUGE-L"]) > cfg.novelty.threshold, first
        page.locator("#lineage tbody tr:not([hidden])").first.scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "report-dropped.png"))
    except Exception:
        page.screenshot(path=str(tmp_path / "report-failure.png"), full_page=True)
        raise
    finally:
        page.close()
    return asked


def task_name(task_run) -> str:
    """The name of the task a task run ran (`candidates`), whatever the run is called
    (`candidates-hard`): looked up by the run's `task_key`; a task run of no lion task (the
    `run_deployment` of a GPU stage) by its task_key."""
    from prefect import Task

    from tasks import discrimination, evaluation, generation, imitation, pools, student

    modules = (discrimination, evaluation, generation, imitation, pools, student)
    names = {t.task_key: t.name for m in modules for t in vars(m).values() if isinstance(t, Task)}
    return names.get(task_run.task_key, task_run.task_key)


def _task_states(flow_run_id, by: str = "task name", timeout: float = 60) -> dict[str, str]:
    """Task name -> state name, for one finished flow run; with `by="run name"`, task run
    name -> state name.

    Task run states reach the API as events, recorded by the server after the flow returns:
    wait until every task run has a final state (or `timeout` passes)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            final = all(r.state is not None and r.state.is_final() for r in runs)
            if final or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    state = {r.id: r.state.name if r.state else "None" for r in runs}
    if by == "run name":
        return {r.name: state[r.id] for r in runs}
    return {task_name(r): state[r.id] for r in runs}


def test_resume_after_a_failure_repeats_nothing(one_round, tmp_path, offline_server):
    """A round fails after the referee stage (the generator is unreachable), is re-run, and
    repeats no request, no training, and ends with the pools of an uninterrupted run."""
    from flows.round import lion_round

    world = offline_server(judge_noise=0.0)
    dead = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    failing = small_config(
        tmp_path / "run",
        **{"teacher.base_url": world.base_url, "referee.base_url": world.base_url},
        **{"generator.base_url": dead, "generator.retries": 0},
    )
    first = lion_round(failing, 1, return_state=True)
    assert first.is_failed()
    store = RunStore.open(failing.storage.root)
    assert store.exists(1, "referee") and store.exists(1, "hard")
    assert not store.exists(1, "generated")
    student_dir = Path(store.storage.path("round=1/student"))
    before = {p.name: p.stat().st_mtime_ns for p in student_dir.iterdir()}

    resumed = lion_round(
        failing.with_overrides({"generator.base_url": world.base_url}), 1, return_state=True
    )
    assert resumed.is_completed()
    states = _task_states(resumed.state_details.flow_run_id)
    redone = {"candidates", "novel-instructions", "next-round-pools"}
    assert {n for n, s in states.items() if s != "Cached"} <= redone, states
    assert {p.name: p.stat().st_mtime_ns for p in student_dir.iterdir()} == before
    # honest counters: the cached tasks' requests were sent by the failed run, not this one
    usage = resumed.result().usage
    assert usage["teacher"].requests == 0 and usage["teacher"].cache_hits == 24
    assert usage["referee"].requests == 0 and usage["referee"].cache_hits >= 48
    assert usage["generator"].requests > 0  # the stage that failed was run (and sent) again

    stats = world.stats()
    for role in ("teacher", "referee", "generator"):
        assert stats[role]["answered_twice"] == 0, (role, stats[role])
        assert stats[role]["requests"] == stats[role]["distinct_bodies"], (role, stats[role])

    # The same seed, uninterrupted, on its own world and root (the module's one round, on the
    # embedded world): the same pools.
    straight, _ = one_round
    other = RunStore.open(straight.storage.root)
    pd.testing.assert_frame_equal(store.read(1, "referee"), other.read(1, "referee"))
    for name in ("train_pool", "cache_pool"):
        pd.testing.assert_frame_equal(store.read(2, name), other.read(2, name))
