"""Training data for the student: prompt template, tokenisation with loss on response tokens only,
truncation accounting, and the two batch layouts (packed, padded).

Packing (the default) puts several examples into one row of at most `max_length` tokens. Each
example restarts its `position_ids` at 0 and no `attention_mask` is passed, which makes
transformers (>= 4.53; masking_utils.find_packed_sequence_indices) build a block-diagonal causal
mask for sdpa, eager and flex attention: a token attends only to earlier tokens of its own
example. Flash-attention kernels take the same information as cumulative sequence lengths, but
only for a batch of one row, so with them the rows are flattened into a single [1, T] sequence
(what `DataCollatorWithFlattening` does). The first label of each example is -100, so the last
token of one example is never trained to predict the first token of the next.

Padding (packing off) is the original Alpaca/Lion layout: one example per row, right-padded to
the longest row of the batch, with an attention mask.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from lion_core.errors import DataError

IGNORE = -100

# The Stanford Alpaca prompt, as used by Lion's training and inference code.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)

TRAIN_COLUMNS = ("instruction", "input", "answer")


def template_texts() -> list[str]:
    """The fixed text of the templates (so a tokenizer trained locally learns it)."""
    return [ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT]


def alpaca_prompt(instruction: str, input: str | None = "") -> str:
    if input:
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def _user_turn(instruction: str, input: str | None) -> dict[str, str]:
    from lion_core.method.prompts import instruction_text

    return {"role": "user", "content": instruction_text(instruction, input)}


def _chat_prompts(tokenizer, users: list[dict[str, str]]) -> list[str]:
    """The chat-template text of each user's turn and the opening of the assistant's."""
    if not users:
        return []
    return tokenizer.apply_chat_template(
        [[user] for user in users], add_generation_prompt=True, tokenize=False
    )


# Texts per tokenizer call: one batched call per chunk (the fast tokenizer's Rust batch, no
# Python per row), chunks so that a 520K-row pool never holds one huge encoding at once.
ENCODE_CHUNK = 8192


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added: the ids `tokenizer.encode` gives each
    text alone, from one call per ENCODE_CHUNK texts (tests/test_student_data.py checks it)."""
    out: list[list[int]] = []
    for at in range(0, len(texts), ENCODE_CHUNK):
        batch = tokenizer(texts[at : at + ENCODE_CHUNK], add_special_tokens=False)
        out.extend(list(ids) for ids in batch["input_ids"])
    return out


def encode_prompts(
    tokenizer, instructions: list[str], inputs: list[str | None], template: str
) -> list[list[int]]:
    """Token ids of each prompt, exactly as training saw it (generation uses the same ids)."""
    if template == "chat_template":
        users = [_user_turn(i, x) for i, x in zip(instructions, inputs, strict=True)]
        return _encode(tokenizer, _chat_prompts(tokenizer, users))
    texts = [alpaca_prompt(i, x) for i, x in zip(instructions, inputs, strict=True)]
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return [bos + ids for ids in _encode(tokenizer, texts)]


def encode_pairs(
    tokenizer,
    instructions: list[str],
    inputs: list[str | None],
    answers: list[str],
    template: str,
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, answer ids) of each row. The prompt's are `encode_prompts`'; the answer's
    end with the end-of-sequence (or end-of-turn) token: with the chat template, what the
    template puts after the prompt (where the full conversation starts with the prompt's text;
    else the answer alone, as with the Alpaca template). Each row's prompt is rendered once."""
    if template != "chat_template":
        prompt_ids = encode_prompts(tokenizer, instructions, inputs, template)
        return prompt_ids, _answers(tokenizer, answers)
    users = [_user_turn(i, x) for i, x in zip(instructions, inputs, strict=True)]
    prompts = _chat_prompts(tokenizer, users)
    chats = [[u, {"role": "assistant", "content": a}] for u, a in zip(users, answers, strict=True)]
    fulls = tokenizer.apply_chat_template(chats, tokenize=False) if chats else []
    rows = [k for k, prompt in enumerate(prompts) if fulls[k].startswith(prompt)]
    tails = _encode(tokenizer, [fulls[k][len(prompts[k]) :] for k in rows])
    out: list[list[int] | None] = [None] * len(answers)
    eos = tokenizer.eos_token_id
    for k, ids in zip(rows, tails, strict=True):
        if ids and eos is not None and eos not in ids:
            ids.append(eos)
        out[k] = ids
    rest = [k for k, ids in enumerate(out) if ids is None]
    for k, ids in zip(rest, _answers(tokenizer, [answers[k] for k in rest]), strict=True):
        out[k] = ids
    return _encode(tokenizer, prompts), out  # type: ignore[return-value]


def _answers(tokenizer, answers: list[str]) -> list[list[int]]:
    """Each answer's ids alone, then the end-of-sequence token."""
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return [ids + eos for ids in _encode(tokenizer, answers)]


def encode_prompt(tokenizer, instruction: str, input: str | None, template: str) -> list[int]:
    """One prompt's token ids (`encode_prompts`)."""
    return encode_prompts(tokenizer, [instruction], [input], template)[0]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizedData:
    examples: list[Example]
    rows: int = 0  # rows in the input table
    truncated: int = 0  # cut at max_length (the end of their answer is lost)
    dropped: int = 0  # no answer token fits: nothing to learn from
    tokens: int = 0
    response_tokens: int = 0
    lengths: list[int] = field(default_factory=list)

    def stats(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "examples": len(self.examples),
            "truncated": self.truncated,
            "dropped": self.dropped,
            "tokens": self.tokens,
            "response_tokens": self.response_tokens,
        }


def encode_example(
    tokenizer, instruction: str, input: str | None, answer: str, template: str, max_length: int
) -> tuple[Example | None, bool]:
    """(example, truncated). The example is None when not one answer token fits."""
    (prompt,), (response,) = encode_pairs(tokenizer, [instruction], [input], [answer], template)
    return _example(prompt, response, max_length)


def _example(
    prompt: list[int], response: list[int], max_length: int
) -> tuple[Example | None, bool]:
    ids = prompt + response
    labels = [IGNORE] * len(prompt) + response
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels[1:]):
        return None, truncated
    labels[0] = IGNORE  # never learn across an example boundary when packed
    return Example(ids, labels), truncated


def check_train_frame(df: pd.DataFrame, source: str = "train data") -> pd.DataFrame:
    """Check the training table's columns; empty `input` becomes ''."""
    missing = [c for c in TRAIN_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; need {list(TRAIN_COLUMNS)}", file=source)
    df = df.copy()
    df["input"] = df["input"].fillna("")
    for col in ("instruction", "answer"):
        bad = df[col].isna() | ~df[col].map(lambda v: isinstance(v, str))
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise DataError("missing or non-text value", file=source, row=row, column=col)
    return df


def tokenize_frame(df: pd.DataFrame, tokenizer, template: str, max_length: int) -> TokenizedData:
    """Tokenise every (instruction, input, answer) row; count truncated and dropped rows."""
    df = check_train_frame(df)
    data = TokenizedData(examples=[], rows=len(df))
    columns = [df[c].tolist() for c in ("instruction", "input", "answer")]
    for at in range(0, len(df), ENCODE_CHUNK):  # a chunk's ids at a time, beside the examples
        chunk = [column[at : at + ENCODE_CHUNK] for column in columns]
        for prompt, response in zip(*encode_pairs(tokenizer, *chunk, template), strict=True):
            _add_example(data, prompt, response, max_length)
    data.lengths = [len(e) for e in data.examples]
    return data


def _add_example(
    data: TokenizedData, prompt: list[int], response: list[int], max_length: int
) -> None:
    ex, truncated = _example(prompt, response, max_length)
    data.truncated += int(truncated)
    if ex is None:
        data.dropped += 1
        return
    data.examples.append(ex)
    data.tokens += len(ex)
    data.response_tokens += sum(1 for label in ex.labels if label != IGNORE)


# ------------------------------------------------------------------------------------------
# Packing
# ------------------------------------------------------------------------------------------


def pack(lengths: list[int], capacity: int, seed: int = 0) -> list[list[int]]:
    """Group example indices into rows of at most `capacity` tokens (best-fit decreasing,
    O(n log n)); rows come out in a seeded random order."""
    if any(n > capacity for n in lengths):
        raise ValueError("an example is longer than the pack capacity")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row index), sorted
    for i in order:
        n = lengths[i]
        at = bisect_left(free, (n, -1))
        if at < len(free):
            space, r = free.pop(at)
        else:
            space, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        if space - n > 0:
            insort(free, (space - n, r))
    rng = random.Random(seed)
    for row in rows:
        rng.shuffle(row)
    rng.shuffle(rows)
    return rows


class PackedDataset(torch.utils.data.Dataset):
    """One item = one packed row: examples concatenated, position ids restarting at each."""

    def __init__(self, examples: list[Example], capacity: int, seed: int = 0) -> None:
        self.examples = examples
        self.rows = pack([len(e) for e in examples], capacity, seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for j in self.rows[i]:
            ex = self.examples[j]
            ids += ex.input_ids
            labels += ex.labels
            pos += range(len(ex))
        return {"input_ids": ids, "labels": labels, "position_ids": pos}


class ExampleDataset(torch.utils.data.Dataset):
    """One item = one example (the padded layout)."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ex = self.examples[i]
        return {"input_ids": ex.input_ids, "labels": ex.labels}


@dataclass
class PackedCollator:
    """Batches packed rows. Rows are padded to the longest row; the padding is its own segment
    (positions from 0, labels ignored) so it never mixes with real tokens. `flatten` turns the
    batch into one [1, T] sequence without any padding, for flash-attention kernels."""

    pad_id: int
    flatten: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.flatten:
            out = {k: [v for r in rows for v in r[k]] for k in ("input_ids", "labels")}
            out["position_ids"] = [p for r in rows for p in r["position_ids"]]
            return {k: torch.tensor([v], dtype=torch.long) for k, v in out.items()}
        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, pos = [], [], []
        for r in rows:
            pad = width - len(r["input_ids"])
            ids.append(r["input_ids"] + [self.pad_id] * pad)
            labels.append(r["labels"] + [IGNORE] * pad)
            pos.append(list(r["position_ids"]) + list(range(pad)))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(pos, dtype=torch.long),
        }


@dataclass
class PaddedCollator:
    """Right-pads single examples to the longest one in the batch, with an attention mask."""

    pad_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in items)
        ids, labels, mask = [], [], []
        for x in items:
            n = len(x["input_ids"])
            ids.append(x["input_ids"] + [self.pad_id] * (width - n))
            labels.append(x["labels"] + [IGNORE] * (width - n))
            mask.append([1] * n + [0] * (width - n))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }


def needs_flat_batches(attn_implementation: str) -> bool:
    """Flash-attention kernels see packed examples only in a single flattened row."""
    return "flash" in (attn_implementation or "")


def build_dataset(
    examples: list[Example],
    *,
    packing: bool,
    max_length: int,
    pad_id: int,
    attn_implementation: str,
    seed: int = 0,
) -> tuple[torch.utils.data.Dataset, Any]:
    """(dataset, collator) for the chosen layout."""
    if packing:
        flat = needs_flat_batches(attn_implementation)
        return PackedDataset(examples, max_length, seed), PackedCollator(pad_id, flatten=flat)
    return ExampleDataset(examples), PaddedCollator(pad_id)
