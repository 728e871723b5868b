"""The run summary as printed and logged: narrow tables, one labelled line, honest counters."""

from __future__ import annotations

from flows.report import SUMMARY_TABLES, requests_line, summary_line, summary_table
from lion_core.run.records import RoundSummary, Usage


def _round(k: int, usage: dict[str, Usage]) -> RoundSummary:
    """A round of a large run: wide numbers in every cell."""
    return RoundSummary(
        round=k, train_pool=52_002, cache_pool=52_002, teacher_failed=13, hard=31_234,
        easy=20_768, unscored=1_000, teacher_score=8.889374999999998,
        student_score=6.123456789, student_to_teacher=0.6888888, positional_bias=0.25,
        new_instructions=6_000, next_train_pool=58_002, student="s3://bucket/run/round=1/student",
        usage=usage, seconds={"imitation": 1234.5}, relative_score=0.91234,
        student_exact_match=0.5,
    )  # fmt: skip


def test_summary_tables_fit_100_columns():
    usage = {
        "teacher": Usage(requests=104_004, cache_hits=1_234_567),
        "referee": Usage(requests=1_040_040, cache_hits=12),
        "generator": Usage(requests=18_000, cache_hits=0),
    }
    text = summary_table([_round(k, usage) for k in (1, 2, 3)])
    tables = text.split("\n\n")
    assert len(tables) == len(SUMMARY_TABLES) == 4
    assert max(len(line) for line in text.splitlines()) <= 100
    first = tables[0].splitlines()
    assert first[0].split()[:3] == ["round", "train_pool", "cache_pool"]
    assert "student_to_teacher" in first[0]
    assert first[1].split()[:3] == ["1", "52002", "52002"]
    assert "8.889" in first[1] and "8.889374" not in first[1]  # rounded
    requests = tables[2].splitlines()
    assert requests[0].split() == [
        "round", "teacher_sent", "teacher_cached", "referee_sent", "referee_cached",
        "generator_sent", "generator_cached",
    ]  # fmt: skip
    assert requests[1].split() == ["1", "104004", "1234567", "1040040", "12", "18000", "0"]


def test_one_line_for_the_log():
    usage = {"teacher": Usage(requests=16), "referee": Usage(requests=32, cache_hits=4)}
    line = summary_line([_round(1, usage), _round(2, usage)])
    assert "\n" not in line and len(line) < 200
    assert "2 round(s)" in line and "round 2: student_to_teacher 0.689" in line
    assert "relative_score 0.912" in line and "requests sent teacher 32, referee 64" in line
    assert requests_line(_round(1, usage)) == (
        "requests sent (answered from cache): teacher 16 (0), referee 32 (4)"
    )


def test_a_result_cached_from_another_run_sent_nothing():
    spent = Usage(requests=20, cache_hits=5, failures=2, prompt_tokens=900, run="run-a")
    assert spent.seen_from("run-a") == spent  # the run that sent them
    again = spent.seen_from("run-b")  # a later run handed the task's cached result
    assert again.requests == 0 and again.prompt_tokens == 0 and again.failures == 0
    assert again.cache_hits == 20 - 2 + 5
    assert Usage(requests=3).seen_from("run-b").requests == 3  # older records: no run known
    total = spent.seen_from("run-b") + Usage(requests=4, run="run-b")
    assert total.requests == 4 and total.run == "run-b"


def test_the_printed_scoreboard_fits_100_columns():
    import pandas as pd

    from lion_core.evaluation import scoreboard

    rows = pd.DataFrame(
        {
            "round": [0, 1], "set": ["vicuna_bench_questions", "offline"],
            "relative_score": [0.61234, None], "interval_low": [0.5512, None],
            "interval_high": [0.6799, None], "wins": [12, 0], "ties": [3, 0],
            "losses": [65, 0], "unscored": [0, 80], "questions": [80, 80],
            "student_exact_match": [None, 0.25], "teacher_exact_match": [None, 1.0],
        }
    )  # fmt: skip
    text = scoreboard.printed(scoreboard.overall(rows.assign(level="overall", category=None)))
    assert max(len(line) for line in text.splitlines()) <= 100
    first, second = (t.splitlines() for t in text.split("\n\n"))
    assert first[0] == "vicuna_bench_questions:" and second[0] == "offline:"
    assert first[1].split() == list(scoreboard.PRINTED_COLUMNS)
    assert "0.551-0.680" in first[2] and second[2].split()[2] == "-"


# ---- the round report (lion_core.run.report) ------------------------------------------------


def test_the_round_report_samples_a_large_round_and_escapes_every_text(tmp_path):
    """A synthetic round (benchmarks/report.py) larger than the caps: the page says what it
    shows of how many, holds no more rows than the caps, escapes the texts, and names no
    network resource; a round without nearest.parquet (written before it existed) or without
    a referee (an ablation arm) still renders."""
    import io
    import re

    import pandas as pd

    from benchmarks.report import synthetic_round
    from lion_core.run.report import render_report, write_report

    store, cfg, k = synthetic_round(tmp_path / "run", 600)
    teacher = store.read(k, "teacher_answers")
    teacher["answer"] = "<script>alert(1)</script> " + teacher["answer"]
    store.storage.delete(f"round={k}/teacher_answers.parquet")
    store.write(k, "teacher_answers", teacher)

    page = render_report(store, k, cfg, max_rows=100, max_seeds=20)
    assert "Showing 100 of 600 instructions" in page
    assert re.search(r"seeds had candidates this round; showing a seeded sample of 20 of them",
                     page)  # fmt: skip
    tables = pd.read_html(io.StringIO(page), attrs={"id": "judged"})
    assert len(tables[0]) == 100
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    assert page.count("<script>") == 1  # report.js, inlined
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    # every seed shown in the lineage has its children link, if its row is in the sample
    assert 'class=children href="#lineage"' in page

    # a round written before nearest.parquet existed: its nearest texts computed on the spot
    store.storage.delete(f"round={k}/nearest.parquet")
    assert "train pool</td>" in render_report(store, k, cfg, max_rows=100, max_seeds=20)

    # an ablation arm's round: no referee, no reviews
    store.storage.delete(f"round={k}/referee.parquet")
    uri = write_report(store, k, cfg, max_rows=100, max_seeds=20)
    assert uri.endswith(f"round={k}/report.html")
    again = (tmp_path / "run" / f"round={k}" / "report.html").read_text()
    assert "both reviews" not in again and "Lineage" in again

    # lion report ROOT --round k renders it again and says where; an unfinished round: exit 1
    from typer.testing import CliRunner

    from flows.cli import app

    root = str(tmp_path / "run")
    done = CliRunner().invoke(app, ["report", root, "--round", str(k)])
    assert done.exit_code == 0, done.output
    assert f"round {k} report: {uri}" in done.output
    missing = CliRunner().invoke(app, ["report", root, "--round", "7"])
    assert missing.exit_code == 1 and "round 7 has not finished" in missing.output
