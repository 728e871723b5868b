"""Student training data: template, loss masking, truncation, packing, and the DeepSpeed config.

The central check: a packed batch (several examples per row, position ids restarting, no
attention mask) gives the same loss and gradients as a padded batch of the same examples, under
sdpa and eager attention, and no packed example can see another.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from lion_core.config import TinyModelSpec, TrainingConfig
from lion_core.errors import ConfigError, DataError
from lion_core.student.data import (
    IGNORE,
    ExampleDataset,
    PackedCollator,
    PackedDataset,
    PaddedCollator,
    alpaca_prompt,
    encode_example,
    encode_prompt,
    pack,
    tokenize_frame,
)
from lion_core.student.ds_config import deepspeed_config
from lion_core.student.model import build_tiny, for_training, train_tokenizer

REPO = Path(__file__).resolve().parent.parent


def _texts() -> list[str]:
    rng = random.Random(0)
    words = ["apple", "river", "stone", "green", "quick", "seven", "house", "light", "sum"]
    return [" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(_texts() + [str(i) for i in range(100)], 400)


def test_split_digits_gives_every_digit_its_own_token_and_survives_saving(tmp_path):
    from transformers import AutoTokenizer

    texts = _texts() + [f"Sort {i * 37}, {i * 101} and {i}." for i in range(300)]
    merged = train_tokenizer(texts, 400)
    split = train_tokenizer(texts, 400, split_digits=True)
    text = "Sort 3700, 10100 and 42 then 9."
    assert any(len(t.strip("Ġ")) > 1 and t.strip("Ġ").isdigit() for t in merged.tokenize(text))
    split.save_pretrained(tmp_path)
    for tok in (split, AutoTokenizer.from_pretrained(tmp_path)):
        pieces = [t.strip("Ġ") for t in tok.tokenize(text)]
        digits = [p for p in pieces if any(c.isdigit() for c in p)]
        assert digits == list("3700101004" + "2" + "9"), pieces
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text


def _rows(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    words = ["apple", "river", "stone", "green", "quick", "seven", "house", "light"]
    rows = []
    for i in range(n):
        instruction = "Repeat " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        inp = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6))) if i % 2 else ""
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(1, 25)))
        rows.append((instruction, inp, answer))
    return rows


def test_prompt_is_the_alpaca_template_and_loss_is_on_the_response_only(tok):
    text = alpaca_prompt("Add 2 and 3.", "")
    assert text.endswith("### Instruction:\nAdd 2 and 3.\n\n### Response:")
    assert "### Input:" in alpaca_prompt("Add the numbers.", "2 and 3")

    ex, truncated = encode_example(tok, "Add 2 and 3.", "", "5", "alpaca", 512)
    assert not truncated
    prompt = encode_prompt(tok, "Add 2 and 3.", "", "alpaca")
    assert ex.input_ids[: len(prompt)] == prompt
    assert ex.input_ids[0] == tok.bos_token_id
    assert ex.input_ids[-1] == tok.eos_token_id
    assert all(label == IGNORE for label in ex.labels[: len(prompt)])
    trained = [t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label != IGNORE]
    assert tok.decode(trained, skip_special_tokens=True) == "5"
    assert trained[-1] == tok.eos_token_id  # the model learns to stop


def test_chat_template_option(tok):
    ex, _ = encode_example(tok, "Add 2 and 3.", "", "5", "chat_template", 512)
    text = tok.decode(ex.input_ids)
    assert "<|user|>\nAdd 2 and 3.\n<|assistant|>\n5" in text
    trained = [t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label != IGNORE]
    assert tok.decode(trained, skip_special_tokens=True).strip() == "5"


def _one_by_one(tok, instruction, inp, answer, template):
    """(prompt ids, response ids) as the tokenizer gives them one row, one text at a time —
    what tokenize_frame's batched calls must reproduce."""
    from lion_core.method.prompts import instruction_text

    eos = tok.eos_token_id
    if template == "alpaca":
        prompt = [
            tok.bos_token_id,
            *tok.encode(alpaca_prompt(instruction, inp), add_special_tokens=False),
        ]
        return prompt, [*tok.encode(answer, add_special_tokens=False), eos]
    user = {"role": "user", "content": instruction_text(instruction, inp)}
    text = tok.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template([user, {"role": "assistant", "content": answer}], tokenize=False)
    assert full.startswith(text)
    response = tok.encode(full[len(text) :], add_special_tokens=False)
    return tok.encode(text, add_special_tokens=False), response + (
        [eos] if eos not in response else []
    )


@pytest.mark.parametrize("template", ["alpaca", "chat_template"])
def test_batched_tokenisation_matches_one_text_at_a_time(tok, template, monkeypatch):
    """tokenize_frame encodes whole columns per tokenizer call (a 52K-row pool: per-row calls
    were ~1 ms a row, docs/scale.md), in chunks; every example is the one-by-one encoding."""
    import lion_core.student.data as data_module

    monkeypatch.setattr(data_module, "ENCODE_CHUNK", 7)  # several chunks, a short last one
    rows = [*_rows(40, seed=3), ("Say it.", "", ""), ("Repeat: é ü 中", "x\ny", "é ü 中 ✓")]
    rows.append((" ".join(["stone green"] * 60), "", "apple"))  # cut at max_length
    df = pd.DataFrame(rows, columns=["instruction", "input", "answer"])
    data = tokenize_frame(df, tok, template, 96)
    expected, truncated = [], 0
    for instruction, inp, answer in rows:
        prompt, response = _one_by_one(tok, instruction, inp, answer, template)
        ids, labels = (prompt + response)[:96], ([IGNORE] * len(prompt) + response)[:96]
        truncated += len(prompt) + len(response) > 96
        if any(label != IGNORE for label in labels[1:]):
            expected.append((ids, [IGNORE, *labels[1:]]))
    assert [(e.input_ids, e.labels) for e in data.examples] == expected
    assert data.truncated == truncated >= 1
    assert data.dropped == len(rows) - len(expected)
    assert encode_prompt(tok, *rows[0][:2], template) == _one_by_one(tok, *rows[0], template)[0]


def test_truncation_and_dropped_examples_are_counted(tok):
    long_answer = " ".join(["apple river"] * 200)
    long_prompt = " ".join(["stone green"] * 200)
    df = pd.DataFrame(
        {
            "instruction": ["Say it.", "Say it.", long_prompt],
            "input": [None, "", ""],
            "answer": ["apple", long_answer, "apple"],
        }
    )
    data = tokenize_frame(df, tok, "alpaca", 64)
    assert data.stats()["rows"] == 3
    assert data.truncated == 2  # the long answer (cut) and the long prompt (nothing left)
    assert data.dropped == 1  # the long prompt: not one answer token fits
    assert len(data.examples) == 2
    assert max(len(e) for e in data.examples) == 64


def test_bad_training_table_names_the_column(tok):
    with pytest.raises(DataError, match="answer"):
        tokenize_frame(pd.DataFrame({"instruction": ["x"], "input": [""]}), tok, "alpaca", 64)
    bad = pd.DataFrame({"instruction": ["x", None], "input": ["", ""], "answer": ["a", "b"]})
    with pytest.raises(DataError, match=r"row 1.*instruction"):
        tokenize_frame(bad, tok, "alpaca", 64)


def test_pack_fills_rows_without_losing_or_splitting_examples():
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(1000)]
    rows = pack(lengths, 512, seed=1)
    flat = sorted(i for row in rows for i in row)
    assert flat == list(range(1000))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    fill = sum(lengths) / (len(rows) * 512)
    assert fill > 0.95, fill
    assert pack(lengths, 512, seed=1) == rows  # deterministic: a resumed run sees the same data
    with pytest.raises(ValueError):
        pack([600], 512)


def _batches(tok, n=6, capacity=256):
    rows = _rows(n)
    exs = [encode_example(tok, *r, "alpaca", capacity)[0] for r in rows]
    padded = PaddedCollator(tok.pad_token_id)([ExampleDataset(exs)[i] for i in range(n)])
    ds = PackedDataset(exs, capacity, seed=0)
    assert len(ds) < n  # rows really hold several examples
    items = [ds[i] for i in range(len(ds))]
    packed = PackedCollator(tok.pad_token_id)(items)
    flat = PackedCollator(tok.pad_token_id, flatten=True)(items)
    return exs, ds, padded, packed, flat


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_and_padded_batches_give_the_same_loss_and_gradients(tok, attn):
    _, _, padded, packed, flat = _batches(tok)
    assert padded["attention_mask"].eq(0).any()  # the padded batch really has padding
    assert (padded["labels"] != IGNORE).sum() == (packed["labels"] != IGNORE).sum()
    model = for_training(build_tiny(TinyModelSpec(vocab_size=400), tok, attn_implementation=attn))
    losses, grads = [], []
    for batch in (padded, packed, flat):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
    assert losses[2] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
    for g in grads[1:]:
        assert torch.allclose(g, grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_examples_never_see_each_other(tok, attn):
    exs, ds, _, packed, _ = _batches(tok)
    model = for_training(build_tiny(TinyModelSpec(vocab_size=400), tok, attn_implementation=attn))
    model.eval()
    with torch.no_grad():
        out = model(**packed).logits
        row = ds.rows[0]
        offset = 0
        for j in row:  # each example's logits equal those it gets alone
            ids = torch.tensor([exs[j].input_ids])
            alone = model(input_ids=ids, use_cache=False).logits[0]
            n = len(exs[j])
            assert torch.allclose(out[0, offset : offset + n], alone, atol=1e-4)
            offset += n


def use_packed_attention(model) -> None:
    """Switch a model's attention to `packed_attention`, as training does through
    `training_attention` (here on a model already built with sdpa)."""
    from lion_core.student import attention

    attention.register()
    model.set_attn_implementation(attention.PACKED_ATTENTION)


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), torch.cat([p.grad.float().flatten() for p in model.parameters()])


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_packed_attention_kernel_matches_padded_sdpa(tok, device):
    """What training runs with packing: `lion_packed` attention (causal attention per example,
    no L x L mask); the reference: padded batches under transformers' sdpa. With grouped KV
    heads. On CUDA in bf16 through torch's varlen flash attention."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from lion_core.student import attention

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    _, _, padded, packed, flat = _batches(tok)
    spec = TinyModelSpec(vocab_size=400, hidden_size=256, num_heads=4, num_kv_heads=2)
    model = for_training(build_tiny(spec, tok)).to(device=device, dtype=dtype)
    to = lambda b: {k: v.to(device) for k, v in b.items()}  # noqa: E731
    ref_loss, ref_grads = _loss_and_grads(model, to(padded))
    use_packed_attention(model)
    assert model.config._attn_implementation == attention.PACKED_ATTENTION
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    for batch in (packed, flat):
        loss, grads = _loss_and_grads(model, to(batch))
        assert loss == pytest.approx(ref_loss, rel=tol)
        cos = torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0)
        assert cos > (0.99 if dtype == torch.bfloat16 else 0.999999)
    # the padded layout under the same kernel (right padding is harmless when causal)
    assert _loss_and_grads(model, to(padded))[0] == pytest.approx(ref_loss, rel=tol)
    if device == "cuda":  # the flash varlen kernel ran, it did not fall back
        assert attention._VARLEN_OK[0] == (attention._VARLEN is not None)


def test_without_for_training_transformers_would_mix_packed_examples(tok):
    """Documents the pitfall `for_training` guards against: with the KV cache on,
    transformers ignores packed boundaries in position_ids and examples see each other."""
    _, _, padded, packed, _ = _batches(tok)
    model = build_tiny(TinyModelSpec(vocab_size=400), tok, attn_implementation="sdpa")
    assert model.config.use_cache
    with torch.no_grad():
        mixed = model(**packed).loss.item()
        reference = model(**padded).loss.item()
    assert mixed != pytest.approx(reference, rel=1e-5)


# ---- DeepSpeed config ---------------------------------------------------------------------


def test_deepspeed_config_follows_training_config():
    z2 = deepspeed_config(TrainingConfig(), bf16=True)
    assert z2["zero_optimization"]["stage"] == 2
    assert z2["bf16"] == {"enabled": True}
    assert "offload_optimizer" not in z2["zero_optimization"]
    assert "optimizer" not in z2  # the Trainer's AdamW and scheduler

    z3 = deepspeed_config(
        TrainingConfig(zero_stage=3, offload_optimizer=True, offload_param=True), bf16=False
    )
    zero = z3["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    assert z3["optimizer"]["type"] == "AdamW"  # DeepSpeed's CPU Adam for offload
    assert z3["bf16"] == {"enabled": False}

    with pytest.raises(ConfigError, match="offload_param"):
        deepspeed_config(TrainingConfig(zero_stage=2, offload_param=True), bf16=False)


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("zero2.json", {}),
        ("zero3.json", {"zero_stage": 3}),
        ("zero2_offload.json", {"offload_optimizer": True}),
        ("zero3_offload.json", {"zero_stage": 3, "offload_optimizer": True, "offload_param": True}),
    ],
)
def test_reference_configs_match_the_generator(name, settings):
    """infra/deepspeed/*.json are what the code generates (bf16, as on GPUs)."""
    on_disk = json.loads((REPO / "infra" / "deepspeed" / name).read_text())
    assert on_disk == deepspeed_config(TrainingConfig(**settings), bf16=True)
