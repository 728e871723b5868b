"""Task results in the run's storage are JSON records of our own types: a planted record that
names another serializer (a pickle that would run code) or type is refused, never loaded."""

from __future__ import annotations

import base64
import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
from prefect import flow

from lion_core.config import LionConfig
from lion_core.run.records import Usage
from tasks.caching import task_key


class _Plant:
    """Unpickling this creates `marker`: the witness that a record was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def pickle_record(marker: Path) -> bytes:
    """A result record as Prefect's default (pickle) serializer writes one."""
    blob = base64.encodebytes(pickle.dumps(_Plant(marker))).decode()
    record = {
        "metadata": {
            "storage_key": None,
            "expiration": None,
            "serializer": {"type": "pickle", "picklelib": "pickle", "picklelib_version": None},
            "prefect_version": "3.8.8",
            "storage_block_id": None,
        },
        "result": blob,
    }
    return json.dumps(record).encode()


@pytest.mark.slow
def test_a_planted_pickle_record_is_refused_not_run(prefect_harness, tmp_path):
    """A pickle planted under the key `seed-pools` looks up: the run fails naming the file,
    and the pickle never runs."""
    from helpers import small_config

    from flows.round import lion_round
    from tasks.pools import seed_pools

    cfg = small_config(tmp_path / "run")
    key = task_key(SimpleNamespace(task=seed_pools), {"config": cfg})
    planted = tmp_path / "run" / "prefect-results" / key
    planted.parent.mkdir(parents=True)
    marker = tmp_path / "executed"
    planted.write_bytes(pickle_record(marker))

    with pytest.raises(Exception) as err:
        lion_round(cfg, 1)
    assert not marker.exists(), "the planted pickle was unpickled"
    from lion_core.errors import ResultRecordError

    assert isinstance(err.value, ResultRecordError), err.value
    assert str(planted) in str(err.value) and "'pickle'" in str(err.value)


def test_every_record_type_round_trips_as_json():
    from lion_core.evaluation.evaluate import EvalSummary, Score
    from lion_core.run.records import Pools, RoundSummary, Usage, result_types
    from lion_core.run.schemas import ArtifactRef
    from tasks.results import LionJSONSerializer

    ref = ArtifactRef(uri="/r/x", path="x", name="train_pool", round=1, rows=3, sha256="ab")
    score = dict(questions=2, scored=2, unscored=0, wins=1, ties=0, losses=1,
                 teacher_score_sum=9.0, student_score_sum=8.0, relative_score=8 / 9,
                 interval=(0.5, 1.0), with_reference=0, teacher_exact_match=None,
                 student_exact_match=None)  # fmt: skip
    summary = EvalSummary(**score, positional_bias=0.1, by_category={"a": Score(**score)},
                          bootstrap=10, seed=1)  # fmt: skip
    usage = Usage(requests=3, prompt_tokens=7)
    rnd = RoundSummary(round=1, train_pool=3, cache_pool=3, teacher_failed=0, hard=1, easy=1,
                       unscored=1, teacher_score=None, student_score=None,
                       student_to_teacher=None, positional_bias=None, new_instructions=0,
                       next_train_pool=3, student="s", usage={"teacher": usage},
                       seconds={"imitation": 1.5})  # fmt: skip
    serializer = LionJSONSerializer()
    values = [ref, Pools(train=ref, cache=ref), summary, rnd, "round=1/student", 3, None,
              [ref, {"k": [1.5, "x"]}]]  # fmt: skip
    for value in values:
        blob = serializer.dumps(value)
        assert b"pickle" not in blob
        assert serializer.loads(blob) == value
    expected = {"lion_core.run.records.Pools", "lion_core.run.schemas.ArtifactRef"}
    assert expected <= set(result_types())

    # A failed task's exception is persisted too: as its class name and message.
    from lion_core.errors import DataError

    back = serializer.loads(serializer.dumps(DataError("bad row", file="f.jsonl", row=3)))
    assert isinstance(back, DataError) and "f.jsonl" in str(back)
    other = serializer.loads(serializer.dumps(KeyError("x")))
    assert type(other) is RuntimeError and "builtins.KeyError" in str(other)

    class Unknown:
        pass

    with pytest.raises(TypeError, match="cannot be persisted"):
        serializer.dumps(Unknown())


def _lion_record(result: dict | list | str) -> dict:
    return {"metadata": {"serializer": {"type": "lion-json"}}, "result": json.dumps(result)}


REFUSED = {
    "pickle": (lambda m: pickle_record(m), "serializer 'pickle'"),
    "prefect json naming a class": (
        lambda m: json.dumps(
            {
                "metadata": {"serializer": {"type": "json"}},
                "result": json.dumps({"__class__": "os.mkdir", "data": str(m)}),
            }
        ).encode(),
        "serializer 'json'",
    ),
    "json with its own decoder": (
        lambda m: json.dumps(
            {
                "metadata": {"serializer": {"type": "json", "object_decoder": "os.mkdir"}},
                "result": "{}",
            }
        ).encode(),
        "serializer 'json'",
    ),
    "lion-json naming another type": (
        lambda m: json.dumps(_lion_record({"$type": "os.mkdir", "value": str(m)})).encode(),
        "names type 'os.mkdir'",
    ),
    "lion-json with an untagged object": (
        lambda m: json.dumps(_lion_record({"__class__": "os.mkdir"})).encode(),
        "without a '\\$type' tag",
    ),
    "lion-json with a top-level serializer (Prefect's old format)": (
        lambda m: json.dumps({**_lion_record("x"), "serializer": {"type": "pickle"}}).encode(),
        "not a task result record",
    ),
    "an invalid record": (
        lambda m: json.dumps(
            _lion_record({"$type": "lion_core.run.records.Pools", "value": {"train": 1}})
        ).encode(),
        "not a valid lion_core.run.records.Pools",
    ),
    "not JSON": (lambda m: b"\x80\x04garbage", "not JSON"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_record_lion_did_not_write_is_refused_on_a_folder(tmp_path, case):
    from prefect.results import ResultStore

    from lion_core.errors import ResultRecordError
    from tasks.results import LionResultStore, LocalResults

    make, reason = REFUSED[case]
    marker = tmp_path / "executed"
    folder = tmp_path / "prefect-results"
    folder.mkdir()
    (folder / "key").write_bytes(make(marker))
    block = LocalResults(basepath=str(folder))
    with pytest.raises(ResultRecordError, match=reason) as err:
        block.read_path("key")
    assert str(folder / "key") in str(err.value) and "delete the file" in str(err.value)
    with pytest.raises(ResultRecordError, match=reason):
        ResultStore(result_storage=block).read("key")
    # Prefect's own lookup reads a refusal as a miss; ours fails loudly.
    assert ResultStore(result_storage=block).exists("key") is False
    with pytest.raises(ResultRecordError, match=reason):
        LionResultStore(result_storage=block).exists("key")
    assert LionResultStore(result_storage=block).exists("missing") is False
    assert not marker.exists()


def test_a_record_lion_did_not_write_is_refused_on_s3(s3_root, tmp_path):
    import s3fs
    from prefect.results import ResultStore

    from lion_core.errors import ResultRecordError
    from lion_core.run.records import Usage
    from tasks.results import LionJSONSerializer, LionResultStore, RemoteResults

    root, options = s3_root
    block = RemoteResults(basepath=f"{root}/prefect-results", settings=options)
    good = ResultStore(result_storage=block, serializer=LionJSONSerializer())
    record = good.create_result_record(Usage(requests=2), key="good")
    block.write_path("good", record.serialize())
    assert good.read("good").result == Usage(requests=2)

    marker = tmp_path / "executed"
    s3fs.S3FileSystem(**options).pipe(f"{root}/prefect-results/planted", pickle_record(marker))
    with pytest.raises(ResultRecordError, match="serializer 'pickle'") as err:
        LionResultStore(result_storage=block).exists("planted")
    assert f"{root}/prefect-results/planted" in str(err.value)
    with pytest.raises(ResultRecordError):
        ResultStore(result_storage=block).read("planted")
    assert not marker.exists()


@pytest.mark.slow
def test_a_subflow_result_loaded_by_its_metadata_is_checked(prefect_harness, tmp_path):
    """On a UI Retry Prefect loads a finished subflow's result from the metadata its state
    holds (`ResultStore._from_metadata`): the saved block it names is ours, so checked."""
    import asyncio

    from helpers import small_config
    from prefect.results import ResultStore

    from lion_core.errors import ResultRecordError
    from lion_core.run.records import Usage
    from tasks.results import run_result_store

    store = run_result_store(ResultStore(), small_config(tmp_path / "run"))
    record = store.create_result_record(Usage(requests=1))
    store.persist_result_record(record)
    assert record.metadata.storage_block_id is not None
    loaded = asyncio.run(ResultStore._from_metadata(record.metadata))
    assert loaded.result == Usage(requests=1)

    path = tmp_path / "run" / "prefect-results" / record.metadata.storage_key
    marker = tmp_path / "executed"
    path.write_bytes(pickle_record(marker))
    with pytest.raises(ResultRecordError, match="serializer 'pickle'"):
        asyncio.run(ResultStore._from_metadata(record.metadata))
    assert not marker.exists()


@pytest.mark.slow
def test_a_flows_own_result_and_failure_are_whole_checked_records(prefect_harness, tmp_path):
    """A flow's return value and a failed flow's exception are stored as whole 'lion-json'
    records too (Prefect writes them bare, for the serializer the API records), so every file
    under prefect-results passes the check, and both load back through it."""
    import asyncio

    from helpers import small_config
    from prefect.results import ResultStore

    from lion_core.errors import DataError
    from lion_core.run.records import Usage
    from tasks.results import checked_record

    cfg = small_config(tmp_path / "run")
    done, failed = returns(cfg, return_state=True), fails(cfg, return_state=True)
    assert done.is_completed() and failed.is_failed()
    results = tmp_path / "run" / "prefect-results"
    files = sorted(results.iterdir())
    assert len(files) == 2
    for path in files:
        checked_record(path.read_bytes(), str(path))
    assert asyncio.run(ResultStore._from_metadata(done.data.metadata)).result == Usage(requests=5)
    back = asyncio.run(ResultStore._from_metadata(failed.data.metadata)).result
    assert isinstance(back, DataError) and "seeds.jsonl, row 4" in str(back)


@flow(persist_result=True)
def returns(config: LionConfig) -> Usage:
    from flows.common import use_run_storage

    use_run_storage(config)
    return Usage(requests=5)


@flow(persist_result=True)
def fails(config: LionConfig) -> Usage:
    from flows.common import use_run_storage
    from lion_core.errors import DataError

    use_run_storage(config)
    raise DataError("bad row", file="seeds.jsonl", row=4)


@pytest.mark.slow
def test_a_record_of_another_type_at_a_tasks_key_names_the_file(prefect_harness, tmp_path):
    """Issue 22, N10: a valid 'lion-json' record of another type (a `Usage` where `seed-pools`
    returns `Pools`) under the task's key is refused when the task looks it up, with one error
    naming the file and both types — not shown Cached and then an AttributeError traceback."""
    from helpers import small_config

    from flows.round import lion_round
    from lion_core.errors import ResultRecordError
    from lion_core.run.records import dump_result
    from tasks.pools import seed_pools

    cfg = small_config(tmp_path / "run")
    key = task_key(SimpleNamespace(task=seed_pools), {"config": cfg})
    planted = tmp_path / "run" / "prefect-results" / key
    planted.parent.mkdir(parents=True)
    record = _lion_record("")
    record["result"] = dump_result(Usage(requests=5)).decode()
    planted.write_text(json.dumps(record))

    with pytest.raises(ResultRecordError) as err:
        lion_round(cfg, 1)
    message = str(err.value)
    assert str(planted) in message, message
    assert "Usage" in message and "Pools" in message and "seed-pools" in message, message
