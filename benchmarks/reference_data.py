"""The real instruction data in ../shared/data, read the same way by benchmarks and tests.

Never copied into the repository: `LION_SHARED_DATA` names another folder.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LION_SHARED_DATA", REPO.parent / "shared" / "data"))


def instruction_texts(data_dir: Path = DATA_DIR) -> dict[str, list[str]]:
    """Instruction texts by source ("gsm8k", "toolformer", "seed"); an Alpaca record's input
    follows its instruction on a new line."""

    def alpaca(name: str) -> list[str]:
        rows = json.loads((data_dir / name).read_text())
        return [r["instruction"] + (("\n" + r["input"]) if r.get("input") else "") for r in rows]

    seed_file = data_dir / "self_instruct_seed_tasks.jsonl"
    return {
        "gsm8k": alpaca("gsm8k_train_alpaca_format.json"),
        "toolformer": alpaca("gpteacher_toolformer_alpaca_format.json"),
        "seed": [
            json.loads(line)["instruction"]
            for line in seed_file.read_text().splitlines()
            if line.strip()
        ],
    }


def near_duplicate(text: str, rate: float, rng: random.Random, words: list[str]) -> str:
    """A near-duplicate: each word replaced, dropped or followed by a new word w.p. `rate`."""
    out = []
    for word in text.split(" "):
        x = rng.random()
        if x < rate / 2:
            out.append(rng.choice(words))
        elif x < rate * 3 / 4:
            continue
        elif x < rate:
            out += [word, rng.choice(words)]
        else:
            out.append(word)
    return " ".join(out)
