"""Task cache keys stay what they were across a renamed task parameter: the Cache Pool's
`cache` became `cache_pool`, and a run root cached before the rename still finds every result
(tasks/caching.py: KEYED_AS)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lion_core.config.presets import demo_config
from lion_core.run.schemas import ArtifactRef
from tasks.caching import task_key
from tasks.discrimination import hard_and_easy, referee_reviews, uniform_split
from tasks.student import student_answers


def _ref(name: str) -> ArtifactRef:
    return ArtifactRef(
        uri=f"/runs/demo/round=1/{name}.parquet",
        path=f"round=1/{name}.parquet",
        name=name,
        round=1,
        rows=8,
        sha256=name * 2,
    )


POOL, TEACHER, STUDENT, REFEREE = (
    _ref(n) for n in ("cache_pool", "teacher_answers", "student_answers", "referee")
)

# The keys these inputs had with the parameter named `cache` (computed by the code before the
# rename). Change only deliberately: a different key re-runs that task on every existing root.
CASES = [
    (
        student_answers,
        {"round": 1, "cache_pool": POOL, "student": "/runs/demo/round=1/student"},
        "5dbec721f0419dd4e89a0814fb3c99b70ac6079648656cfc61de1df397fe624c",
    ),
    (
        referee_reviews,
        {
            "round": 1,
            "cache_pool": POOL,
            "teacher": TEACHER,
            "student": STUDENT,
            "order": 2,
            "offline_url": "http://x",
        },
        "6aa4cd2b77e6d2dec4e3c0346369150f336142990fd14df7b39a87ffc288b324",
    ),
    (
        hard_and_easy,
        {
            "round": 1,
            "cache_pool": POOL,
            "teacher": TEACHER,
            "student": STUDENT,
            "referee": REFEREE,
        },
        "d4533089eb4a320578d1f129a1f5929003b7e0965f2737faff71b2a00b63642c",
    ),
    (
        uniform_split,
        {"round": 1, "cache_pool": POOL},
        "a92f0cc97a44e5df9aba7428dcd9dab3bea49c452a71fee37a247ddd98c46b14",
    ),
]


@pytest.mark.parametrize(("task", "inputs", "key"), CASES, ids=[c[0].name for c in CASES])
def test_a_renamed_parameter_keys_as_before(task, inputs, key):
    # the demo as the keys were computed: before issue 21's preset (fields at their defaults)
    before = {"pools.holdback": 0.0, "generator.max_attempts": 1}
    before["generator.max_category_share"] = 1.0
    cfg = demo_config(root="/runs/demo", rounds=1).with_overrides(before)
    assert "cache_pool" in task.fn.__code__.co_varnames  # the task takes the new name
    assert task_key(SimpleNamespace(task=task), {"config": cfg, **inputs}) == key
    other = {**inputs, "cache_pool": TEACHER}  # and the input still counts by its content
    assert task_key(SimpleNamespace(task=task), {"config": cfg, **other}) != key
