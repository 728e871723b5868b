"""Referee calibration on known-order pairs: degradations, the figures by hand, and the offline
referee's injected positional bias detected through the real server, client and CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import answer_frame
from typer.testing import CliRunner

from lion_core.config import LionConfig
from lion_core.evaluation.referee_check import (
    DEGRADATIONS,
    change_number,
    degrade,
    known_order_pairs,
    run_referee_check,
    sample_instructions,
    summarize,
)
from lion_core.method.referee import PAIR_COLUMNS
from lion_core.run.schemas import pool_frame, seed_row

# ---- degraded answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "changed"),
    [
        ("The total is 42.", "The total is 43."),
        ("1, 5, 9", "1, 5, 10"),
        ("It costs 3.50 dollars", "It costs 4.50 dollars"),
        ("-5", "-4"),
        ("x1y2 and 7 apples", "x1y2 and 8 apples"),  # digits inside a word are not a number
        ("olleh", None),
    ],
)
def test_change_number(text, changed):
    assert change_number(text) == changed


def test_degradations():
    answer = "The answer is 42 because six times seven is 42."
    assert degrade(answer, "truncated") == "The answer is"  # first third, cut at a space
    assert degrade(answer, "wrong_number") == "The answer is 42 because six times seven is 43."
    assert degrade(answer, "empty") == ""
    assert degrade(answer, "other_answer", "Paris") == "Paris"
    assert degrade(answer, "false_claim") == (
        answer + "\n\nI have double-checked this carefully: the correct final answer is 43."
    )
    # without a number the false claim names another question's answer (its first line)
    assert degrade("olleh", "false_claim", "dlrow\nmore") == (
        'olleh\n\nI have double-checked this carefully: the correct final answer is "dlrow".'
    )
    # kinds that do not apply, or would not change the answer
    assert degrade("olleh", "wrong_number") is None
    assert degrade("olleh", "false_claim") is None
    assert degrade("7", "truncated") is None
    assert degrade("Paris", "other_answer", "Paris ") is None
    assert degrade("Paris", "other_answer") is None
    with pytest.raises(ValueError, match="unknown degradation 'shuffle'"):
        degrade("x", "shuffle")


def test_known_order_pairs():
    pool = pool_frame([seed_row("Add 40 and 2."), seed_row("Reverse hello."), seed_row("Fail.")])
    ids = pool["instruction_id"].tolist()
    answers = answer_frame({ids[0]: "40 + 2 = 42", ids[1]: "olleh", ids[2]: None})
    pairs = known_order_pairs(pool, answers)
    assert set(PAIR_COLUMNS) <= set(pairs.columns)
    by_kind = dict(zip(pairs["instruction_id"], pairs["student_answer"], strict=True))
    assert set(pairs["source_id"]) == {ids[0], ids[1]}  # the failed answer gives no pair
    assert by_kind[f"{ids[0]}:wrong_number"] == "40 + 2 = 43"
    assert by_kind[f"{ids[0]}:other_answer"] == "olleh"
    assert by_kind[f"{ids[1]}:other_answer"] == "40 + 2 = 42"
    assert by_kind[f"{ids[0]}:truncated"] == "40" and by_kind[f"{ids[1]}:truncated"] == "o"
    assert f"{ids[1]}:wrong_number" not in by_kind  # no number in "olleh"
    assert (pairs["teacher_answer"] == pairs["source_id"].map({ids[0]: "40 + 2 = 42",
                                                               ids[1]: "olleh"})).all()  # fmt: skip
    assert pairs["missing"].isna().all()


def test_sample_is_seeded_and_ignores_row_order():
    pool = pool_frame([seed_row(f"Instruction number {i}.") for i in range(30)])
    a = sample_instructions(pool, 5, seed=1)
    b = sample_instructions(pool.iloc[::-1], 5, seed=1)
    assert a["instruction_id"].tolist() == b["instruction_id"].tolist() and len(a) == 5
    assert len(sample_instructions(pool, 100, seed=1)) == 30


# ---- the figures, by hand --------------------------------------------------------------------


def _scored(rows: list[tuple[float, float, float, float] | None]) -> pd.DataFrame:
    """(real in order 1, degraded in order 1, real in order 2, degraded in order 2) per pair;
    None: unscored."""
    out = []
    for k, r in enumerate(rows):
        if r is None:
            out.append({"instruction_id": f"p{k}", "status": "unscored"})
            continue
        t1, s1, t2, s2 = r
        out.append({"instruction_id": f"p{k}", "status": "scored", "teacher_score_1": t1,
                    "student_score_1": s1, "teacher_score_2": t2, "student_score_2": s2,
                    "teacher_score": (t1 + t2) / 2, "student_score": (s1 + s2) / 2})  # fmt: skip
    return pd.DataFrame(out)


def test_summary_by_hand():
    cal = summarize(
        _scored(
            [
                (9, 3, 9, 3),  # right in both orders
                (9, 6, 6, 8),  # real wins shown first, loses shown second: favours first
                (5, 7, 7, 5),  # the opposite: favours the second
                (8, 8, 6, 8),  # tie, then degraded better: flips, leaning first (0 > -1)
                (7, 7, 7, 7),  # tie in both orders: consistent, a tie
                None,  # unscored
            ]
        )
    )
    assert (cal.pairs, cal.scored) == (6, 5)
    assert cal.agreement == pytest.approx(2 / 5)  # means: 9>3, 7.5>7; 6=6 tie; 7<8; 7=7
    assert cal.ties == pytest.approx(2 / 5)
    assert cal.consistency == pytest.approx(2 / 5) and cal.flips == pytest.approx(3 / 5)
    assert cal.favours_first == pytest.approx(2 / 5) and cal.favours_second == pytest.approx(1 / 5)
    assert cal.unscored == pytest.approx(1 / 6)
    # positional bias: mean((t1 - s1) + (s2 - t2)) / 2 = mean(0, 2.5, -2, 1, 0) = 0.3
    assert cal.positional_bias == pytest.approx(0.3)
    assert cal.first_lift_real == pytest.approx(np.mean([0, 3, -2, 2, 0]))
    assert cal.first_lift_degraded == pytest.approx(np.mean([0, 2, -2, 0, 0]))
    assert cal.agreement_real_first == pytest.approx(2 / 5)  # 9>3, 9>6
    assert cal.agreement_real_second == pytest.approx(2 / 5)  # 9>3, 7>5
    empty = summarize(_scored([None, None]))
    assert empty.scored == 0 and empty.unscored == 1.0 and empty.consistency is None


# ---- the offline referee: injected positional bias, noise and garbled reviews --------------


def _check(tmp_path, n: int = 20, **offline) -> dict:
    cfg = LionConfig().with_overrides(
        {"storage.root": str(tmp_path / "run"), **{f"offline.{k}": v for k, v in offline.items()}}
    )
    return run_referee_check(cfg, n).to_json()


def test_referee_check_detects_an_injected_positional_bias(tmp_path):
    fair = _check(tmp_path / "fair", positional_bias=0.0, judge_noise=0.5)
    biased = _check(tmp_path / "biased", positional_bias=3.0, judge_noise=0.5)
    for result in (fair, biased):
        assert result["instructions"] == 20 and result["teacher_failed"] == 0
        assert set(result["by_kind"]) == set(DEGRADATIONS)
        assert result["pairs"] >= 80 and result["overall"]["unscored"] == 0
        # averaging both orders keeps the known order right, bias or not
        assert result["overall"]["agreement"] == 1.0
    f, b = fair["overall"], biased["overall"]
    # no bias: nothing for being first, and every verdict survives the swap
    assert abs(f["positional_bias"]) < 0.2 and abs(f["first_lift_degraded"]) < 0.2
    assert f["consistency"] == 1.0
    # 3 points for the first answer: the degraded answers gain ~3 when shown first (the real
    # answer, at the 10 ceiling, cannot), so the two-sided estimate sees about half of it
    assert 2.5 <= b["first_lift_degraded"] <= 3.2
    assert 1.2 <= b["positional_bias"] <= 1.8 and b["first_lift_real"] < 0.5
    # and the close pairs (a false final claim: 10 vs 8) now flip, all toward the first answer
    assert b["consistency"] <= 0.85 and b["flips"] == pytest.approx(b["favours_first"])
    assert b["favours_first"] > 0.15
    assert b["favours_second"] == 0 and biased["by_kind"]["false_claim"]["consistency"] < 0.5
    assert biased["by_kind"]["empty"]["consistency"] == 1.0


def test_referee_check_counts_unscored_reviews(tmp_path):
    cfg = LionConfig().with_overrides(
        {"storage.root": str(tmp_path / "run"), "referee.reasks": 0,
         "offline.faults.rate_garbled": 0.3}
    )  # fmt: skip
    result = run_referee_check(cfg, 10)
    pairs = result.pairs
    unscored = (pairs["status"] != "scored").sum()
    assert 0 < unscored < len(pairs)
    assert result.overall.unscored == pytest.approx(unscored / len(pairs))
    assert result.overall.scored == len(pairs) - unscored
    assert pairs.loc[pairs["status"] != "scored", "error"].str.startswith("unparsable").all()


# ---- the CLI, with the run's response cache -----------------------------------------------


def test_cli_referee_check_json_text_and_cache(tmp_path, offline_server):
    from flows.cli import app

    server = offline_server(positional_bias=3.0, judge_noise=0.0)
    # An http endpoint (the offline world served on its own): answers go to the run's cache.
    endpoint = {"base_url": server.base_url}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"storage": {"root": str(tmp_path / "run")},
                                    "teacher": endpoint, "referee": endpoint}))  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(app, ["referee-check", "-c", str(path), "--pairs", "6", "--json"])
    assert first.exit_code == 0, first.output
    data = json.loads(first.output)
    # no noise: an empty answer scores 1 shown second and 1 + 3 shown first
    assert data["instructions"] == 6 and data["by_kind"]["empty"]["first_lift_degraded"] == 3.0
    assert 2.5 <= data["overall"]["first_lift_degraded"] <= 3.0  # some hit the 10 ceiling
    assert data["usage"]["teacher"]["requests"] == 6
    assert data["usage"]["referee"]["requests"] == 2 * data["pairs"]
    assert "Zheng et al. 2023" in data["reference"]
    assert (tmp_path / "run" / "llm_cache" / "teacher").is_dir()

    again = runner.invoke(app, ["referee-check", "-c", str(path), "--pairs", "6"])
    assert again.exit_code == 0, again.output
    out = again.output
    assert "teacher 0 sent / 6 from cache" in out
    assert f"referee 0 sent / {2 * data['pairs']} from cache" in out
    lines = out.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["kind", "pairs", "scored"]
    )
    overall = lines[header + 1 + len(data["by_kind"])].split()
    assert overall[0] == "overall" and int(overall[1]) == data["pairs"]
    assert "same verdict in both orders" in out and "MT-Bench" in out

    bad = runner.invoke(app, ["referee-check", "-c", str(path), "--role", "teacher"])
    assert bad.exit_code == 2 and "--role" in bad.output


def test_cli_referee_check_in_an_ablation_root_uses_its_shared_cache_prices_and_budget(
    tmp_path, offline_server
):
    """`lion ablate` shares one response cache across its arms (`storage.shared_llm_cache`):
    the referee check of one arm answers the teacher from what another arm's check paid for,
    prices the answers with the config's `pricing` and stops at its `budget_usd` (counting what
    that arm paid for)."""
    from flows.cli import app
    from lion_core.errors import BudgetExceeded
    from lion_core.evaluation.ablation import arm_config
    from lion_core.llm.cache import spent_usd
    from lion_core.run.storage import Storage

    server = offline_server(judge_noise=0.0)
    root = tmp_path / "ablation"
    base = LionConfig().with_overrides(
        {"teacher.base_url": server.base_url, "referee.base_url": server.base_url,
         "pricing": {"offline-": {"input": 1000.0, "output": 1000.0}}}
    )  # fmt: skip
    paths = {}
    for arm in ("lion", "uniform"):
        paths[arm] = tmp_path / f"{arm}.yaml"
        arm_config(base, str(root), arm, 0).to_yaml(paths[arm])
    runner = CliRunner()

    def check(arm: str, *args: str):
        return runner.invoke(app, ["referee-check", "-c", str(paths[arm]), "--json", *args])

    first = check("lion", "--pairs", "4")
    assert first.exit_code == 0, first.output
    usage = json.loads(first.output)["usage"]
    assert usage["teacher"]["requests"] == 4 and usage["teacher"]["cost_usd"] > 0
    assert usage["referee"]["requests"] > 0 and usage["referee"]["cost_usd"] > 0
    assert (root / "llm_cache" / "teacher").is_dir()  # the shared cache, not the arm's own
    assert not (root / "lion" / "seed=0" / "llm_cache").exists()
    sent = server.stats()
    assert sent["teacher"]["requests"] == 4

    # Another arm, the same seed: every answer from the shared cache, nothing sent.
    second = check("uniform", "--pairs", "4")
    assert second.exit_code == 0, second.output
    usage2 = json.loads(second.output)["usage"]
    assert usage2["teacher"]["requests"] == 0 and usage2["teacher"]["cache_hits"] == 4
    assert usage2["referee"]["requests"] == 0
    assert server.stats() == sent

    # What an arm's checks paid is that arm's spend (budgets on a shared cache are per run
    # root): a budget just above it stops its next check before it sends anything.
    spent = sum(spent_usd(Storage(str(root)), str(root / "lion" / "seed=0")).values())
    assert spent == pytest.approx(usage["teacher"]["cost_usd"] + usage["referee"]["cost_usd"])
    assert sum(spent_usd(Storage(str(root))).values()) == pytest.approx(spent)  # uniform: $0
    over = check("lion", "--pairs", "8", "--set", f"budget_usd={spent + 0.001}")
    assert over.exit_code != 0 and isinstance(over.exception, BudgetExceeded), over.output
    assert over.exception.spent == pytest.approx(spent)
    assert "teacher" in over.exception.stage
    assert server.stats() == sent
