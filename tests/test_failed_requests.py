"""Failed LLM requests are never frozen into a run: a task whose requests failed (beyond the
role's `max_failed_share`) fails without committing a snapshot or a cached result, and the next
invocation re-asks exactly the failed requests — the successes come from the response cache.
The offline world's fault injection makes the failures; its /stats counters are the witness."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from helpers import small_config

from lion_core.config import LionConfig, OfflineWorldConfig, TeacherConfig
from lion_core.errors import EndpointRejectedError, LeaseLostError, RequestsFailedError
from lion_core.llm import LLMClient, ResponseCache
from lion_core.method.imitation import answer_instructions
from lion_core.offline.world import seed_pool
from lion_core.run import layout
from lion_core.run.storage import Storage
from lion_core.run.store import RunStore

FAULTY = {"rate_500": 0.5}  # with retries 0: about half the requests fail, the rest answer


def _roles(url: str, faulty_url: str | None = None, faulty_role: str | None = None) -> dict:
    """Every role at `url`, except `faulty_role` (retries 0) at `faulty_url`."""
    out = {f"{r}.base_url": url for r in ("teacher", "referee", "generator")}
    out["judge"] = {"base_url": url, "model": "offline-judge", "max_tokens": 200}
    if faulty_role == "judge":
        out["judge"] = {**out["judge"], "base_url": faulty_url, "retries": 0}
    elif faulty_role:
        out.update({f"{faulty_role}.base_url": faulty_url, f"{faulty_role}.retries": 0})
    return out


# ---- the client's verdict ------------------------------------------------------------------


def test_raise_for_failures_names_role_counts_and_first_error(offline_server, tmp_path):
    faulty = offline_server(faults=FAULTY)
    pool = seed_pool(24, 0, 6)
    endpoint = TeacherConfig(retries=0)
    client = LLMClient(
        endpoint,
        role="teacher",
        cache=ResponseCache(Storage(str(tmp_path)), "teacher"),
        base_url=faulty.base_url,
    )
    answers = answer_instructions(pool, client, endpoint.model)
    failed = int((answers["status"] != "ok").sum())
    assert 0 < failed < 24 and failed == faulty.stats()["teacher"]["status"]["500"]
    with pytest.raises(RequestsFailedError) as caught:
        client.raise_for_failures()
    err = caught.value
    assert (err.role, err.failed, err.asked) == ("teacher", failed, 24)
    assert f"teacher: {failed} of 24 requests failed" in str(err)
    assert "HTTP 500" in str(err) and "teacher.max_failed_share" in str(err)

    # A share at or under the tolerated one passes, and says how many it let through.
    client.endpoint = TeacherConfig(retries=0, max_failed_share=failed / 24)
    assert client.raise_for_failures() == failed
    client.endpoint = TeacherConfig(retries=0, max_failed_share=(failed - 1) / 24)
    with pytest.raises(RequestsFailedError):
        client.raise_for_failures()


# ---- every task that asks an endpoint ------------------------------------------------------


def _inputs(cfg: LionConfig, url: str):
    """What the LLM tasks take, built by the tasks themselves on a healthy world: the pools, the
    teacher's answers (standing in for the student's too), both referee orders and the split,
    an evaluation question set with the teacher's and the 'student's' answers."""
    from tasks.discrimination import hard_and_easy, referee_reviews, referee_scores
    from tasks.evaluation import evaluation_questions, teacher_eval_answers
    from tasks.imitation import teacher_answers
    from tasks.pools import seed_pools

    pools = seed_pools.fn(cfg)
    teacher = teacher_answers.fn(cfg, 1, pools)
    orders = [
        referee_reviews.fn(cfg, 1, pools.cache, teacher.answers, teacher.answers, k) for k in (1, 2)
    ]
    scores = referee_scores.fn(cfg, 1, *orders)
    split = hard_and_easy.fn(cfg, 1, pools.cache, teacher.answers, teacher.answers, scores)
    questions = evaluation_questions.fn(cfg, "offline")
    eval_teacher = teacher_eval_answers.fn(cfg, questions)
    store = RunStore.open(cfg.storage.root)
    at = layout.evaluation("round=1", "offline", "student_answers")
    answers = store.read_ref(eval_teacher.answers)
    answers["answer"] = "I think " + answers["answer"]  # the judge sees two different answers
    student = store.write(1, "student_answers", answers, at)
    return pools, teacher, split, questions, eval_teacher, student


def _call(task: str, cfg: LionConfig, inputs):
    from tasks.discrimination import referee_reviews
    from tasks.evaluation import judge_scores, teacher_eval_answers
    from tasks.generation import candidates
    from tasks.imitation import teacher_answers

    pools, teacher, split, questions, eval_teacher, student = inputs
    if task == "teacher-answers":
        return teacher_answers.fn(cfg, 1, pools)
    if task == "referee-reviews":
        return referee_reviews.fn(cfg, 1, pools.cache, teacher.answers, teacher.answers, 1)
    if task == "candidates":
        return candidates.fn(cfg, 1, split, "easy")
    if task == "teacher-eval-answers":
        return teacher_eval_answers.fn(cfg, questions)
    return judge_scores.fn(cfg, "round=1", 1, questions, eval_teacher.answers, student, "student-x")


# task -> (role that fails, the offline world's name for it, the snapshot it commits)
TASKS = {
    "teacher-answers": ("teacher", "teacher", layout.artifact(1, "teacher_answers")),
    "referee-reviews": ("referee", "referee", layout.artifact(1, "referee_1")),
    "candidates": ("generator", "generator", layout.artifact(1, "candidates_easy")),
    "teacher-eval-answers": (
        "teacher",
        "teacher",
        layout.evaluation("", "offline", "teacher_answers"),
    ),
    "judge-scores": ("judge", "referee", layout.evaluation("round=1", "offline", "judged")),
}


BASE = {"pools.offline_seeds": 16, "evaluation.offline_per_cell": 1, "referee.max_tokens": 200}


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory):
    """A run root holding every input of the LLM tasks, made once on a healthy world; each
    test works on a copy."""
    from lion_core.offline.server import OfflineServer

    root = tmp_path_factory.mktemp("healthy") / "run"
    with OfflineServer(OfflineWorldConfig()) as world:
        cfg = LionConfig().with_overrides(
            {**BASE, "storage.root": str(root), **_roles(world.base_url)}
        )
        inputs = _inputs(cfg, world.base_url)
    return root, inputs


@pytest.mark.parametrize("task", list(TASKS))
def test_a_task_with_failed_requests_commits_nothing_and_resumes_them(
    task, healthy_run, offline_server, tmp_path
):
    role, world_role, snapshot = TASKS[task]
    source, inputs = healthy_run
    shutil.copytree(source, tmp_path / "run")
    store = RunStore.open(str(tmp_path / "run"))
    # The setup committed the snapshot and cached the role's answers: start this task afresh.
    store.storage.delete(snapshot)
    store.storage.delete(layout.llm_cache(role), recursive=True)

    faulty, world = offline_server(faults=FAULTY), offline_server()
    cfg = LionConfig().with_overrides({**BASE, "storage.root": str(tmp_path / "run")})
    with pytest.raises(RequestsFailedError) as caught:
        _call(task, cfg.with_overrides(_roles(world.base_url, faulty.base_url, role)), inputs)
    err = caught.value
    assert err.role == role and 0 < err.failed < err.asked
    assert err.failed == faulty.stats()[world_role]["status"]["500"]
    assert not store.storage.exists(snapshot), "failures were committed"

    record = _call(task, cfg.with_overrides(_roles(world.base_url)), inputs)
    sent = world.stats()[world_role]
    assert sent["requests"] == sent["distinct_bodies"] == err.failed  # the failed ones, only
    assert store.storage.exists(snapshot)
    assert record.usage.failures == 0


# ---- the round -----------------------------------------------------------------------------


@pytest.mark.slow
def test_failed_teacher_answers_fail_the_round_and_are_re_asked(
    prefect_harness, tmp_path, offline_server
):
    """The round fails (not a cached, complete teacher-answers task with failures inside); the
    next run on the same root sends the working endpoint exactly the failed requests."""
    from flows.round import lion_round

    faulty, world = offline_server(faults=FAULTY), offline_server(judge_noise=0.0)
    cfg = small_config(tmp_path / "run", **_roles(world.base_url, faulty.base_url, "teacher"))
    first = lion_round(cfg, 1, return_state=True)
    assert first.is_failed()
    with pytest.raises(RequestsFailedError) as caught:
        first.result()
    err = caught.value
    assert 0 < err.failed < 24 and err.asked == 24
    assert err.failed == faulty.stats()["teacher"]["status"]["500"]  # no pointless task retry
    store = RunStore.open(cfg.storage.root)
    assert not store.exists(1, "teacher_answers")
    assert "teacher" not in world.stats()

    resumed = lion_round(cfg.with_overrides({"teacher.base_url": world.base_url}), 1)
    sent = world.stats()["teacher"]
    assert sent["requests"] == sent["distinct_bodies"] == err.failed
    assert (store.read(1, "teacher_answers")["status"] == "ok").all()
    assert resumed.teacher_failed == 0 and resumed.usage["teacher"].cache_hits == 24 - err.failed


@pytest.mark.slow
def test_a_tolerated_failure_share_lets_the_round_proceed(
    prefect_harness, tmp_path, offline_server
):
    from flows.round import lion_round

    faulty, world = offline_server(faults=FAULTY), offline_server(judge_noise=0.0)
    cfg = small_config(
        tmp_path / "run",
        **_roles(world.base_url, faulty.base_url, "teacher"),
        **{"teacher.max_failed_share": 0.9},
    )
    summary = lion_round(cfg, 1)
    failed = faulty.stats()["teacher"]["status"]["500"]
    assert 0 < failed < 24
    assert summary.teacher_failed == summary.usage["teacher"].failures == failed
    assert summary.flat()["teacher_failures"] == failed
    answers = RunStore.open(cfg.storage.root).read(1, "teacher_answers")
    assert (answers["status"] == "failed").sum() == failed
    assert pd.notna(answers.loc[answers["status"] == "failed", "error"]).all()


@pytest.mark.parametrize(
    "error, retried",
    [
        (TimeoutError("the provider was slow"), True),
        (
            RequestsFailedError("teacher: 3 of 24", role="teacher", failed=3, asked=24, first="x"),
            False,
        ),
        # issue 22: nothing a retry can fix — the key or model refused, the lease lost
        (
            EndpointRejectedError(
                "teacher: HTTP 401", role="teacher", base_url="u", model="m", status=401
            ),
            False,
        ),
        (LeaseLostError("this run's lease on r was lost"), False),
    ],
)
def test_prefect_retries_a_task_only_when_a_retry_can_help(error, retried):
    """Prefect retried a task twice, 10 s apart, after EndpointRejectedError (401/403/404),
    although no request of it could succeed."""
    from prefect.states import Failed

    from tasks.runtime.retry import retry_unless_requests_failed

    assert retry_unless_requests_failed(None, None, Failed(data=error)) is retried
