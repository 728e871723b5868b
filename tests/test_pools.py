"""Pools and storage: identical round trips on a folder and on S3 (moto), atomic snapshots,
initial-data errors that name the file, row and column."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from helpers import logged

from lion_core.config import LionConfig
from lion_core.errors import DataError, SchemaError, SnapshotExistsError
from lion_core.method.seeds import load_initial_data
from lion_core.run.schemas import ARTIFACT_SCHEMAS, instruction_id
from lion_core.run.store import RunStore


def _pool(n: int = 50) -> pd.DataFrame:
    rows = []
    for i in range(n):
        instr, inp = f"Add {i} and {i * 7}.", "" if i % 3 else f"context {i} — ünïcode"
        rows.append(
            {
                "instruction_id": instruction_id(instr, inp),
                "instruction": instr,
                "input": inp,
                "reference": None if i % 2 else str(i * 8),
                "source": "seed" if i < 40 else "hard",
                "parent_id": None if i < 40 else instruction_id("Add 0 and 0.", ""),
                "round": 0 if i < 40 else 1,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return RunStore.open(str(tmp_path / "run"))
    root, options = request.getfixturevalue("s3_root")
    return RunStore.open(root, options)


def test_round_trip_is_identical(store):
    df = _pool()
    ref = store.write(1, "train_pool", df)
    assert ref.rows == len(df) and len(ref.sha256) == 64
    back = store.read(1, "train_pool")
    pd.testing.assert_frame_equal(back, df.astype({"round": "int32"}), check_dtype=True)
    assert store.ref(1, "train_pool") == ref
    assert store.rounds() == [1]
    counts = store.counts()[1]
    assert counts["train_pool"] == len(df) and counts["cache_pool"] is None
    if store.storage.is_local:
        assert ref.uri.endswith("round=1/train_pool.parquet")
    else:
        assert ref.uri.startswith("s3://")


def test_pools_written_with_the_old_output_column_still_load(store):
    """A run written before the rename (the seed's own answer was the pools' `output` column)
    reads with `reference` holding that answer: pools and the tables built on them (hard
    examples, generated candidates); a pool with both columns keeps its `reference`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lion_core.run import layout

    def old(table: pa.Table) -> bytes:
        names = ["output" if n == "reference" else n for n in table.column_names]
        sink = pa.BufferOutputStream()
        pq.write_table(table.rename_columns(names), sink)
        return sink.getvalue().to_pybytes()

    df = _pool(6)
    written = store.write(1, "train_pool", df)
    assert written.rows == 6
    store.storage.write_bytes(
        layout.artifact(2, "train_pool"), old(store.read_table(1, "train_pool"))
    )
    back = store.read(2, "train_pool")
    assert "output" not in back and list(back.columns) == ARTIFACT_SCHEMAS["train_pool"].names
    assert back["reference"].tolist() == df["reference"].tolist()
    assert back["reference"].notna().sum() == 3  # the seeds' answers survived the rename

    hard = df.assign(teacher_answer="t", student_answer="s", teacher_score=8.0,
                     student_score=3.0, gap=5.0)  # fmt: skip
    table = pa.Table.from_pandas(hard, schema=ARTIFACT_SCHEMAS["hard"], preserve_index=False)
    store.storage.write_bytes(layout.artifact(2, "hard"), old(table))
    assert store.read(2, "hard")["reference"].tolist() == df["reference"].tolist()

    both = pa.Table.from_pandas(df.assign(output="stale"), preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(both, sink)
    store.storage.write_bytes(layout.artifact(3, "train_pool"), sink.getvalue().to_pybytes())
    assert store.read(3, "train_pool")["reference"].tolist() == df["reference"].tolist()


def test_an_artifact_written_before_a_nullable_column_was_added_reads_it_as_nulls(store):
    """An older run's pool without a column the schema has since gained still loads (resume
    and reports keep working), the new column null, as pyarrow's schema-driven read used to."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lion_core.run import layout

    schema = ARTIFACT_SCHEMAS["train_pool"]
    table = pa.Table.from_pandas(_pool(4), schema=schema, preserve_index=False)
    nullable = "parent_id"

    def write(k: int, t: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(t, sink)
        store.storage.write_bytes(layout.artifact(k, "train_pool"), sink.getvalue().to_pybytes())

    write(1, table.drop_columns([nullable]))
    back = store.read(1, "train_pool")
    assert list(back.columns) == schema.names and back[nullable].isna().all()
    assert back["instruction"].tolist() == table.column("instruction").to_pylist()


def test_a_damaged_artifact_is_one_error_naming_the_file(store, tmp_path):
    """`lion pools` and a task's ref of a damaged Parquet file: a StorageError naming the
    file, not pyarrow's ArrowInvalid (issue 22, N13). Local and S3."""
    from lion_core.errors import StorageError

    store.write(1, "train_pool", _pool())
    store.storage.write_bytes("round=1/train_pool.parquet", b"not parquet", overwrite=True)
    for read in (store.counts, lambda: store.ref(1, "train_pool")):
        with pytest.raises(StorageError, match=r"round=1/train_pool\.parquet is not a readable"):
            read()
    if store.storage.is_local:  # and the command line says it in one line, exit 2
        cli = [sys.executable, "-m", "flows.cli", "pools", store.uri()]
        done = subprocess.run(cli, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "train_pool.parquet is not a readable Parquet file" in done.stderr
        assert "Traceback" not in done.stderr and "ArrowInvalid:" not in done.stderr


def test_committed_snapshot_is_never_overwritten(store):
    store.write(1, "train_pool", _pool(5))
    with pytest.raises(SnapshotExistsError):
        store.write(1, "train_pool", _pool(6))
    assert store.read(1, "train_pool").shape[0] == 5
    assert store.write_or_reuse(1, "train_pool", _pool(6)).rows == 5


def test_schema_is_enforced(store):
    with pytest.raises(SchemaError, match="instruction_id"):
        store.write(1, "train_pool", _pool(3).drop(columns=["instruction_id"]))
    with pytest.raises(SchemaError, match="unknown artifact"):
        store.write(1, "not_an_artifact", _pool(3))
    assert not store.exists(1, "train_pool")
    for name, schema in ARTIFACT_SCHEMAS.items():
        store.write(2, name, schema.empty_table())
    assert all(v == 0 for k, v in store.counts()[2].items() if k != "student")


KILL_LOCAL = textwrap.dedent(
    """
    import os, signal, sys
    import pandas as pd
    from lion_core.run.storage import Storage
    st = Storage(sys.argv[1])
    real_fsync = os.fsync
    def die(fd):  # the process dies after the bytes hit the temp file, before commit
        os.kill(os.getpid(), signal.SIGKILL)
    os.fsync = die
    st.write_bytes("round=1/train_pool.parquet", b"PAR1" + b"x" * 100000)
    """
)


def test_interrupted_local_write_leaves_no_snapshot(tmp_path):
    root = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_LOCAL, str(root)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    leftovers = list((root / "round=1").iterdir())
    assert leftovers and all(".tmp-" in p.name for p in leftovers)  # only the temp file
    store = RunStore.open(str(root))
    assert store.ref(1, "train_pool") is None
    assert store.counts()[1]["train_pool"] is None
    store.write(1, "train_pool", _pool(4))  # a resume can write the real snapshot
    assert store.read(1, "train_pool").shape[0] == 4
    # the dead writer's temporary file went with that write
    assert [p.name for p in (root / "round=1").iterdir()] == ["train_pool.parquet"]


KILL_S3 = textwrap.dedent(
    """
    import os, signal, sys
    import s3fs
    fs = s3fs.S3FileSystem(endpoint_url=sys.argv[2])
    with fs.open(sys.argv[1], "wb", block_size=5 * 2**20) as fh:
        fh.write(os.urandom(12 * 2**20))  # two parts uploaded, the upload never completed
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_interrupted_s3_write_leaves_no_snapshot(s3_root):
    root, options = s3_root
    store = RunStore.open(root, options)
    target = store.storage.path("round=1/train_pool.parquet")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_S3, target, options["endpoint_url"]], capture_output=True
    )
    assert proc.returncode == -9, proc.stderr.decode()
    assert store.ref(1, "train_pool") is None
    store.write(1, "train_pool", _pool(4))
    assert store.read(1, "train_pool").shape[0] == 4


def test_run_info(store):
    store.write_run_info({"config": {"rounds": 3}, "versions": {"lion": "0.1.0"}})
    assert store.read_run_info()["config"]["rounds"] == 3
    with pytest.raises(SnapshotExistsError):
        store.write_run_info({})


# ---- initial data ----------------------------------------------------------------------------


def test_initial_data_formats_agree(tmp_path, caplog):
    records = [
        {"instruction": "Give three tips.", "input": "", "output": "1. a"},
        {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
        {"instruction": "Give three tips.", "input": "", "output": "dup"},
    ]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    pd.DataFrame(records).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(records).to_parquet(tmp_path / "a.parquet")
    with caplog.at_level("WARNING", logger="lion_core.method.seeds"):
        loaded = [
            load_initial_data(str(tmp_path / f"a.{ext}"))
            for ext in ("json", "jsonl", "csv", "parquet")
        ]
    for seeds in loaded[1:]:
        pd.testing.assert_frame_equal(seeds.pool, loaded[0].pool)
    assert len(loaded[0].pool) == 2  # the duplicate is dropped, counted and reported
    assert [s.duplicates for s in loaded] == [1, 1, 1, 1]
    warned = [r.getMessage() for r in logged(caplog, "lion_core.method.seeds")]
    assert len(warned) == 4 and "a.csv" in warned[2] and "1 duplicate" in warned[2]
    assert set(loaded[0].pool["source"]) == {"seed"}
    assert load_initial_data(str(tmp_path / "a.json"), limit=1).pool.shape[0] == 1


ODD = ["Line\u2028separated", "Next\x85line", "Form\x0cfeed"]  # not line ends in JSONL/CSV


def test_non_utf8_initial_data_names_the_file_and_line(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl.*UTF-8.*line 2") as err:
        load_initial_data(str(latin))
    assert err.value.row == 2
    (tmp_path / "latin.json").write_bytes(b'[{"instruction": "ok"},\n{"instruction": "\xff"}]')
    with pytest.raises(DataError, match=r"latin\.json\b.*line 2"):
        load_initial_data(str(tmp_path / "latin.json"))


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    """U+2028, U+0085 and \\x0c are valid raw inside a JSON string; only "\\n" ends a record."""
    jsonl = tmp_path / "odd.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"instruction": i}, ensure_ascii=False) + "\n" for i in ODD)
    )
    assert list(load_initial_data(str(jsonl)).pool["instruction"]) == ODD


def test_csv_fields_keep_form_feed_and_next_line(tmp_path):
    """\\x0c and \\x85 stay inside their field; a quoted line break spans lines."""
    csv_path = tmp_path / "odd.csv"
    pd.DataFrame({"instruction": ODD, "input": ["a", "b\nc", "d"]}).to_csv(csv_path, index=False)
    seeds = load_initial_data(str(csv_path)).pool
    assert list(seeds["instruction"]) == ODD and list(seeds["input"]) == ["a", "b\nc", "d"]


def test_a_utf8_bom_is_not_part_of_the_first_column(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM."""
    for name, text in [
        ("bom.csv", "instruction,input\nSay hi.,\n"),
        ("bom.jsonl", '{"instruction": "Say hi."}\n'),
        ("bom.json", '[{"instruction": "Say hi."}]'),
    ]:
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert list(load_initial_data(str(tmp_path / name)).pool["instruction"]) == ["Say hi."]


def test_csv_errors_name_the_line_a_record_starts_on(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('instruction,input\n"Summarize:\nline two\nline three",x\n\n,empty\n')
    with pytest.raises(DataError) as err:
        load_initial_data(str(path))
    assert (err.value.row, err.value.column) == (6, "instruction")  # the third record, line 6


def test_initial_data_errors_name_file_row_column(tmp_path):
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"instruction": "ok"}\n{"instruction": \n')
    with pytest.raises(DataError) as err:
        load_initial_data(str(bad_line))
    assert err.value.row == 2 and "bad.jsonl" in str(err.value)

    missing = tmp_path / "missing_col.jsonl"
    missing.write_text('{"instruction": "ok"}\n{"prompt": "no instruction"}\n')
    with pytest.raises(DataError) as err:
        load_initial_data(str(missing))
    assert (err.value.row, err.value.column) == (2, "instruction")

    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("instruction,input\nfine,\n,empty\n")
    with pytest.raises(DataError) as err:
        load_initial_data(str(csv_path))
    assert (err.value.row, err.value.column) == (3, "instruction")

    wrong_type = tmp_path / "t.json"
    wrong_type.write_text(json.dumps([{"instruction": "a"}, {"instruction": "b", "input": 5}]))
    with pytest.raises(DataError) as err:
        load_initial_data(str(wrong_type))
    assert (err.value.row, err.value.column) == (1, "input")

    with pytest.raises(DataError, match="file not found"):
        load_initial_data(str(tmp_path / "nope.json"))
    with pytest.raises(DataError, match="unsupported format"):
        load_initial_data(str(tmp_path / "a.txt"))


def test_oversize_instructions_are_left_out_counted_and_reported(tmp_path, caplog):
    limit = LionConfig().pools.max_instruction_chars
    records = [
        {"instruction": "Short.", "input": ""},
        {"instruction": "x" * (limit - 10), "input": "y" * 10},  # exactly at the limit: kept
        {"instruction": "Summarize this.", "input": "z" * limit},  # over it with its input
        {"instruction": "w" * (limit + 1)},
    ]
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with caplog.at_level("WARNING", logger="lion_core.method.seeds"):
        seeds = load_initial_data(str(path))
    assert list(seeds.pool["instruction"]) == ["Short.", "x" * (limit - 10)]
    assert (seeds.oversize, seeds.duplicates) == (2, 0)
    assert any(
        "big.jsonl" in r.getMessage() and "2 longer" in r.getMessage() for r in caplog.records
    )

    tight = load_initial_data(str(path), max_instruction_chars=len("Short."))
    assert tight.oversize == 3 and list(tight.pool["instruction"]) == ["Short."]
    assert load_initial_data(str(path), max_instruction_chars=None).oversize == 0
    only_big = tmp_path / "only_big.jsonl"
    only_big.write_text(json.dumps(records[3]) + "\n")
    with pytest.raises(DataError, match=r"only_big\.jsonl.*1 longer than"):
        load_initial_data(str(only_big))


def test_real_alpaca_files_load(shared_data):
    df = load_initial_data(str(shared_data / "gsm8k_train_alpaca_format.json")).pool
    assert len(df) > 7000 and df["instruction_id"].is_unique


# ---- failed and abandoned local writes ------------------------------------------------------

FULL_DISK = textwrap.dedent(
    """
    import json, resource, signal, sys
    from lion_core.errors import StorageError
    from lion_core.run.storage import Storage
    st = Storage(sys.argv[1])
    # A real write failure: past RLIMIT_FSIZE the kernel refuses the write (EFBIG), as a full
    # disk refuses it with ENOSPC; the same code path, and nothing real gets filled.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        st.write_bytes("round=1/train_pool.parquet", b"x" * 100000)
    except Exception as exc:
        errno = getattr(exc.__cause__, "errno", None)
        print(json.dumps({"storage_error": isinstance(exc, StorageError), "errno": errno,
                          "message": str(exc)}))
    """
)


def test_a_failed_local_write_leaves_no_temporary_file(tmp_path):
    import errno

    root = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(root)], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["storage_error"], out
    assert "round=1/train_pool.parquet" in out["message"] and out["errno"] == errno.EFBIG
    assert list((root / "round=1").iterdir()) == []  # neither the file nor its temporary file


HANG_LOCAL = textwrap.dedent(
    """
    import os, sys, time
    from lion_core.run.storage import Storage
    st = Storage(sys.argv[1])
    def hang(fd):  # a writer still busy with its temporary file
        print("writing", flush=True)
        time.sleep(600)
    os.fsync = hang
    st.write_bytes("round=1/teacher_answers.parquet", b"PAR1" + b"x" * 1000)
    """
)


def test_stale_temporary_files_are_removed_by_the_next_write(tmp_path):
    import os
    import time

    from lion_core.run.storage import Storage

    root = tmp_path / "run"
    folder = root / "round=1"
    folder.mkdir(parents=True)
    old = folder / ".hard.parquet.tmp-0123456789abcdef"  # an older name, abandoned long ago
    old.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    fresh = folder / ".easy.parquet.tmp-fedcba9876543210"  # writer unknown, recent: kept
    fresh.write_bytes(b"x")
    writer = subprocess.Popen(
        [sys.executable, "-c", HANG_LOCAL, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        live = [p.name for p in folder.iterdir() if "teacher_answers" in p.name]
        assert len(live) == 1 and ".tmp-" in live[0]

        storage = Storage(str(root))
        storage.write_bytes("round=1/a.parquet", b"a")
        names = {p.name for p in folder.iterdir()}
        assert names == {"a.parquet", fresh.name, live[0]}  # the live writer's file is kept
    finally:
        writer.kill()
        writer.wait()
    storage.write_bytes("round=1/b.parquet", b"b")  # its writer is dead now
    assert {p.name for p in folder.iterdir()} == {"a.parquet", "b.parquet", fresh.name}


def test_storage_failures_are_storage_errors_naming_the_file(tmp_path):
    from lion_core.errors import StorageError
    from lion_core.run.storage import Storage

    storage = Storage(str(tmp_path / "run"))
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(StorageError, match=r"round=1/loop\.json"):
        storage.write_json("round=1/loop.json", loop)
    with pytest.raises(StorageError, match=r"round=1/t\.parquet"):
        storage.write_parquet("round=1/t.parquet", {"not": "a table"})
    with pytest.raises(StorageError, match=r"round=1/s\.bin"):
        storage.write_bytes("round=1/s.bin", "text, not bytes")
    storage.write_bytes("round=1/file", b"x")
    with pytest.raises(StorageError, match=r"round=1/file/under"):
        storage.write_bytes("round=1/file/under", b"x")
    with (
        pytest.raises(StorageError, match=r"round=1/file"),
        storage.local_dir("round=1/file", tmp_path / "scratch"),
    ):
        pass
    storage.write_bytes("round=2/full/x", b"x")
    with pytest.raises(StorageError, match=r"round=2/full"):
        storage.delete("round=2/full")  # a non-empty folder without recursive=True
    assert [p.name for p in (tmp_path / "run" / "round=1").iterdir()] == ["file"]
