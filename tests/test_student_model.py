"""The round-0 student: tiny from config (tokenizer trained locally), or a recorded hub id/path;
idempotent, never trusting a half-written folder; local and s3:// storage."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config

from lion_core.config import LionConfig
from lion_core.run.store import RunStore
from lion_core.student.checkpoints import COMPLETE, materialize
from lion_core.student.model import load_student, prepare_base_student

TEXTS = [f"Add {a} and {b}. The sum is {a + b}." for a in range(20) for b in range(10)]


def _cfg(**student) -> LionConfig:
    """The tiny student (a 300-token vocabulary), or the student section `student`."""
    if student:
        return LionConfig.from_dict({"student": student})
    return tiny_config(**{"student.tiny.vocab_size": 300})


def test_tiny_student_is_built_saved_and_reloaded(tmp_path):
    cfg = _cfg()
    store = RunStore.open(str(tmp_path / "run"))
    uri = prepare_base_student(cfg, store, TEXTS)
    assert uri == str(tmp_path / "run" / "round=0" / "student")
    files = {p.name for p in (tmp_path / "run" / "round=0" / "student").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", COMPLETE} <= files

    model, tok = load_student(uri, cfg)
    assert model.config.model_type == "llama"
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert len(tok) <= 300 and model.config.vocab_size == len(tok)
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    ids = tok.encode("Add 3 and 4. The sum is 7.", add_special_tokens=False)
    assert tok.decode(ids) == "Add 3 and 4. The sum is 7."
    assert len(ids) < 20  # the tokenizer learned the text, not bytes
    with torch.no_grad():
        assert model(input_ids=torch.tensor([ids])).logits.shape == (1, len(ids), len(tok))


def test_split_digits_reaches_the_saved_tokenizer(tmp_path):
    for split in (False, True):
        cfg = tiny_config(**{"student.tiny.vocab_size": 600, "student.tiny.split_digits": split})
        uri = prepare_base_student(cfg, RunStore.open(str(tmp_path / str(split))), TEXTS)
        _, tok = load_student(uri, cfg)
        pieces = [t.strip("Ġ") for t in tok.tokenize("Add 13 and 7. The sum is 20.")]
        numbers = [p for p in pieces if p.isdigit()]
        assert "".join(numbers) == "13720", pieces
        assert all(len(p) == 1 for p in numbers) is split, pieces


def test_prepare_is_idempotent_and_replaces_a_half_written_folder(tmp_path):
    cfg = _cfg()
    store = RunStore.open(str(tmp_path))
    uri = prepare_base_student(cfg, store, TEXTS)
    weights = tmp_path / "round=0" / "student" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert prepare_base_student(cfg, store, TEXTS) == uri
    assert weights.stat().st_mtime_ns == before  # reused, not rebuilt

    (tmp_path / "round=0" / "student" / COMPLETE).unlink()  # as if killed before the marker
    (tmp_path / "round=0" / "student" / "junk.bin").write_bytes(b"x")
    prepare_base_student(cfg, store, TEXTS)
    assert (tmp_path / "round=0" / "student" / COMPLETE).exists()
    assert not (tmp_path / "round=0" / "student" / "junk.bin").exists()


def test_hub_id_or_path_is_recorded_not_copied(tmp_path):
    cfg = _cfg(model="meta-llama/Llama-2-7b-hf", revision="main")
    store = RunStore.open(str(tmp_path))
    uri = prepare_base_student(cfg, store, [])
    assert materialize(uri) == "meta-llama/Llama-2-7b-hf"
    assert not (tmp_path / "round=0" / "student" / "config.json").exists()

    # a local model folder is recorded by its absolute path
    tiny_store = RunStore.open(str(tmp_path / "elsewhere"))
    folder = prepare_base_student(_cfg(), tiny_store, TEXTS)
    store2 = RunStore.open(str(tmp_path / "run2"))
    uri2 = prepare_base_student(_cfg(model=folder), store2, [])
    assert materialize(uri2) == folder
    model, _ = load_student(uri2, _cfg(model=folder))
    assert model.config.hidden_size == 32


def test_tiny_student_needs_texts(tmp_path):
    from lion_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"student\.tiny"):
        prepare_base_student(_cfg(), RunStore.open(str(tmp_path)), [])


def test_tiny_student_on_s3(s3_root):
    root, options = s3_root
    cfg = _cfg().with_overrides({"storage.root": root, "storage.options": options})
    store = RunStore.open(root, options)
    uri = prepare_base_student(cfg, store, TEXTS)
    assert uri == f"{root}/round=0/student"
    assert store.storage.exists(f"round=0/student/{COMPLETE}")
    assert store.storage.exists("round=0/student/model.safetensors")
    model, tok = load_student(uri, cfg)  # downloaded to scratch
    assert model.config.vocab_size == len(tok)
    assert prepare_base_student(cfg, store, TEXTS) == uri


def test_a_damaged_student_folder_is_a_lion_error_naming_the_file(tmp_path):
    """Damaged weights (a truncated safetensors file), a tokenizer.json of the wrong shape, or
    a config that does not fit the weights fail as ModelLoadError naming the folder or file,
    not as SafetensorError / KeyError / RuntimeError tracebacks."""
    import json

    from lion_core.errors import LionError, ModelLoadError

    cfg = _cfg()
    uri = prepare_base_student(cfg, RunStore.open(str(tmp_path)), TEXTS)
    folder = tmp_path / "round=0" / "student"
    weights, tokenizer, config = (folder / n for n in ("model.safetensors", "tokenizer.json",
                                                       "config.json"))  # fmt: skip
    good = {p: p.read_bytes() for p in (weights, tokenizer, config)}

    weights.write_bytes(good[weights][: len(good[weights]) // 2])
    with pytest.raises(ModelLoadError, match="damaged") as err:
        load_student(uri, cfg)
    assert str(weights) in str(err.value)
    weights.write_bytes(good[weights])

    tokenizer.write_text(json.dumps({"version": "1.0"}))
    with pytest.raises(LionError) as err:
        load_student(uri, cfg)
    assert str(folder) in str(err.value) and "tokenizer" in str(err.value)
    tokenizer.write_bytes(good[tokenizer])

    config.write_text(good[config].decode().replace('"hidden_size": 32', '"hidden_size": 64'))
    with pytest.raises(LionError) as err:
        load_student(uri, cfg)
    assert str(folder) in str(err.value)
