"""The novelty filter makes exactly rouge_score's keep/drop decisions (ROUGE-L F1, no stemming)."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
from rouge_score import rouge_scorer

from benchmarks.reference_data import instruction_texts, near_duplicate
from lion_core.errors import ConfigError, DataError
from lion_core.method import join_kernel
from lion_core.method.novelty import (
    NoveltyStats,
    filter_novel,
    max_rouge_l,
    nearest_rouge_l,
    rouge_l_f1,
    tokenize,
)

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_tokens(text: str) -> list[str]:
    return SCORER._tokenizer.tokenize(text)


def best_f1(tokens: list[str], others: list[list[str]], counts: list[Counter]) -> float | None:
    """rouge_score's highest ROUGE-L F1 (`_score_lcs`) of `tokens` against `others` (`counts`:
    their token counts); None when there are none. F1 = 2 LCS / (len a + len b), and the LCS is
    at most the tokens the two share (a multiset intersection), so pairs whose bound is below
    the best F1 found so far are not scored: the same maximum, at a fraction of rouge_score's
    quadratic LCS calls (100,000 pairs of real instructions took 88 s of CI)."""
    if not others:
        return None
    mine = Counter(tokens)
    bounds = [
        (2 * sum((mine & count).values()) / max(len(tokens) + len(other), 1), i)
        for i, (other, count) in enumerate(zip(others, counts, strict=True))
    ]
    best = -1.0
    for bound, i in sorted(bounds, reverse=True):
        if bound + 1e-9 < best:
            break
        best = max(best, rouge_scorer._score_lcs(tokens, others[i]).fmeasure)
    return best


def reference(candidates, pool, threshold=0.7):
    """The original Lion loop: rouge_score's ROUGE-L F1 of each candidate against every pool
    instruction and every candidate kept so far; drop when the max F1 is > threshold. Returns
    the keep flags and each candidate's max F1 (None when there was nothing to compare)."""
    all_tokens = [rouge_tokens(p) for p in pool]
    counts = [Counter(t) for t in all_tokens]
    keep, best = [], []
    for cand in candidates:
        tokens = rouge_tokens(cand)
        f = best_f1(tokens, all_tokens, counts)
        best.append(f)
        keep.append(not (f is not None and f > threshold))  # drop only when F1 > threshold
        if keep[-1]:
            all_tokens.append(tokens)
            counts.append(Counter(tokens))
    return keep, best


# --- tokenisation and single scores ---------------------------------------------------------

UNICODE_CASES = [
    "",
    "   ",
    "?!... --- ###",
    "Ünïcödé café naïve façade — 東京 2024",
    "KELVIN \u212a and \u0130stanbul \u00df straße",  # lower() maps these to ASCII / 2 chars
    "ΑΣ ΣΑ σ ς Σ",  # final sigma: context-dependent lower(), never an ASCII token
    "tab\tnew\nline\r\nmixed_under_score x1y2 3.14 e=mc^2",
    "ﬁ ligature ＡＢＣ fullwidth ①②",
]


def test_tokenize_matches_rouge_score(shared_data):
    data = instruction_texts(shared_data)
    texts = [t for group in data.values() for t in group] + UNICODE_CASES
    mismatches = [t for t in texts if tokenize(t) != rouge_tokens(t)]
    assert not mismatches, mismatches[:3]


def test_single_scores_match_rouge_score_bit_for_bit(shared_data):
    """Our F1 equals `_score_lcs(...).fmeasure` exactly, on near-duplicate real pairs (many
    near 0.7) and on texts long enough for multi-word bit vectors."""
    rng = random.Random(1)
    data = instruction_texts(shared_data)
    texts = data["gsm8k"][:300] + data["toolformer"][:300]
    words = [w for t in texts for w in t.split()]
    long_texts = [" ".join(rng.choice(words[:400]) for _ in range(rng.randint(60, 260)))]
    pairs = []
    for _ in range(1500):
        a = rng.choice(texts)
        pairs.append((a, near_duplicate(a, rng.uniform(0.05, 0.6), rng, words)))
    for _ in range(60):
        a = " ".join(rng.choice(words[:300]) for _ in range(rng.randint(60, 260)))
        pairs.append((a, near_duplicate(a, rng.uniform(0.05, 0.5), rng, words)))
    pairs += [(a, b) for a in UNICODE_CASES for b in UNICODE_CASES + long_texts]
    near = 0
    for a, b in pairs:
        ta, tb = rouge_tokens(a), rouge_tokens(b)
        expected = rouge_scorer._score_lcs(ta, tb).fmeasure
        assert rouge_l_f1(ta, tb) == expected, (a, b)
        near += 0.6 < expected < 0.8
    assert near > 200  # the pairs really sit around the threshold


@pytest.mark.parametrize(
    ("lcs", "la", "lb", "threshold"),
    # 2·lcs/(la+lb) == threshold exactly in real arithmetic; in floating point some of these
    # come out a hair above it (dropped) and some exactly on it (kept).
    [
        (7, 10, 10, 0.7),
        (7, 7, 13, 0.7),
        (7, 8, 12, 0.7),
        (7, 9, 11, 0.7),
        (14, 20, 20, 0.7),
        (21, 30, 30, 0.7),
        (35, 50, 50, 0.7),
        (2, 4, 4, 0.5),
        (1, 3, 3, 1 / 3),
    ],
)
def test_scores_exactly_at_the_threshold(lcs, la, lb, threshold):
    shared = [f"s{i}" for i in range(lcs)]
    a = shared + [f"a{i}" for i in range(la - lcs)]
    b = [f"b{i}" for i in range(lb - lcs)] + shared
    cand, pool = " ".join(a), " ".join(b)
    expected, best = reference([cand], [pool], threshold)
    assert math.isclose(best[0], threshold)
    assert filter_novel([cand], [pool], threshold) == expected
    assert filter_novel([pool, cand], [], threshold) == reference([pool, cand], [], threshold)[0]


def test_threshold_ties_cover_both_outcomes():
    """Among the exact ties above, floating point sends some each way — the test is not moot."""
    outcomes = set()
    for lcs, la, lb in [(7, 10, 10), (7, 7, 13), (7, 8, 12), (7, 9, 11), (14, 20, 20)]:
        p, r = lcs / lb, lcs / la
        outcomes.add(2 * p * r / (p + r) > 0.7)
    assert outcomes == {True, False}


# --- decisions ------------------------------------------------------------------------------


@pytest.mark.slow
def test_decisions_match_rouge_score_on_real_instructions(shared_data):
    """2,000 real instructions (GSM8K, tool-use, Self-Instruct seeds) as the pool, and candidates
    made to sit around 0.7: edits of pool items at many rates, exact copies, held-out real
    instructions (templated tool-use prompts score high against each other), repeated
    candidates, edits of a shared source among the candidates, and odd strings."""
    rng = random.Random(7)
    data = {k: list(v) for k, v in instruction_texts(shared_data).items()}
    for group in data.values():
        rng.shuffle(group)
    pool = data["gsm8k"][:900] + data["toolformer"][:925] + data["seed"]
    assert len(pool) == 2000
    held_out = data["gsm8k"][900:930] + data["toolformer"][925:955]
    words = [w for t in pool for w in t.split()]

    candidates = [
        near_duplicate(rng.choice(pool), rng.uniform(0.1, 0.5), rng, words) for _ in range(22)
    ]
    candidates += rng.sample(pool, 3)
    candidates += rng.sample(held_out, 8)
    sources = rng.sample(held_out, 3)
    candidates += [
        near_duplicate(s, rng.uniform(0.05, 0.35), rng, words) for s in sources for _ in range(3)
    ]
    candidates += ["", "?!", "Ünïcödé café naïve — 東京", "KELVIN \u212a"]
    rng.shuffle(candidates)
    candidates += rng.sample(candidates, 4)  # repeats of earlier candidates, kept or not

    expected, best = reference(candidates, pool)
    stats = NoveltyStats()
    assert filter_novel(candidates, pool, stats=stats) == expected
    assert stats.kept == sum(expected)
    assert stats.pairs == len(candidates) * len(pool) + sum(
        sum(expected[:i]) for i in range(len(candidates))
    )
    # The case is not trivial: decisions go both ways, several of them close to the line.
    assert 10 <= sum(expected) <= len(candidates) - 10
    assert sum(0.6 < b < 0.8 for b in best if b is not None) >= 8


def test_decisions_match_on_small_vocabularies():
    """Random texts over 2-8 words: LCS ties everywhere, repeated tokens, many duplicates."""
    rng = random.Random(3)
    for _ in range(120):
        vocab = "abcdefgh"[: rng.randint(2, 8)]

        def text(vocab=vocab):
            return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 14)))

        pool = [text() for _ in range(rng.randint(0, 15))]
        cands = [text() for _ in range(rng.randint(1, 15))]
        cands += rng.sample(cands + pool, min(3, len(cands + pool)))
        for threshold in (0.7, 0.5, 0.0, 1.0):
            assert filter_novel(cands, pool, threshold) == reference(cands, pool, threshold)[0]


def test_decisions_match_on_long_texts():
    """Texts of 60-200 tokens need several 64-bit words per bit vector."""
    rng = random.Random(4)
    base = [" ".join(rng.choice("abcdef") for _ in range(rng.randint(60, 200))) for _ in range(6)]
    words = list("abcdef")
    pool = [near_duplicate(b, rng.uniform(0.05, 0.4), rng, words) for b in base for _ in range(2)]
    cands = [near_duplicate(b, rng.uniform(0.05, 0.4), rng, words) for b in base for _ in range(2)]
    for threshold in (0.7, 0.85, 0.95):
        assert filter_novel(cands, pool, threshold) == reference(cands, pool, threshold)[0]


def use_lcs_kernel(kernel: str, monkeypatch) -> None:
    """Every batch's LCS by `kernel`: "numba" (compiled, skipped where numba is not installed)
    or "numpy" (vectorised, and Python ints for a few pairs)."""
    from lion_core.method import novelty

    if kernel == "numba":
        if not join_kernel.available():
            pytest.skip("numba is not installed")
        assert join_kernel.ready()  # installed, so it must import: else this tests numpy
        monkeypatch.setattr(novelty, "_LCS_KERNEL_PAIRS", 0)  # compiled for every batch
    else:
        monkeypatch.setattr(novelty, "_LCS_KERNEL", "numpy")


@pytest.mark.parametrize("kernel", ["numpy", "numba"])
def test_lcs_kernels_match_rouge_score(kernel, monkeypatch):
    """Every LCS kernel — numpy over many pairs, Python ints for a few, compiled pair by pair —
    with 0 to 260 tokens (1-5 word bit vectors, the word boundaries), against rouge_score."""
    from lion_core.method.novelty import _Corpus, _lcs_pairs

    use_lcs_kernel(kernel, monkeypatch)
    rng = random.Random(5)
    lengths = [0, 1, 2, 63, 64, 65, 127, 128, 129, 200, 260]
    big_vocab = [f"w{i}" for i in range(2000)]  # sparse: most a-tokens are in no b-text
    texts = [
        " ".join(rng.choice("abcde"[: rng.randint(1, 5)]) for _ in range(rng.choice(lengths)))
        for _ in range(50)
    ]
    texts += [" ".join(rng.choice("abcde") for _ in range(rng.randint(0, 150))) for _ in range(30)]
    for _ in range(30):
        vocab = big_vocab[: rng.choice([20, 2000])]
        texts.append(" ".join(rng.choice(vocab) for _ in range(rng.choice(lengths))))
    corpus = _Corpus(texts)
    tokens = [rouge_tokens(t) for t in texts]
    a = np.array([rng.randrange(len(texts)) for _ in range(600)])
    b = np.array([rng.randrange(len(texts)) for _ in range(600)])
    for n in (600, 5):  # many pairs (numpy's vectorised path), then a few (Python's)
        got = _lcs_pairs(corpus, a[:n], b[:n])
        want = [
            rouge_scorer._lcs_table(tokens[i], tokens[j])[-1][-1] if tokens[i] and tokens[j] else 0
            for i, j in zip(a[:n], b[:n], strict=True)
        ]
        assert got.tolist() == want


@pytest.mark.parametrize("kernel", ["numpy", "numba"])
def test_decisions_and_maxima_with_each_lcs_kernel(kernel, monkeypatch):
    """The equivalence tests with the LCS of every batch compiled, and with numpy's only (which
    one runs otherwise depends on the batch's size and on numba being loaded already)."""
    use_lcs_kernel(kernel, monkeypatch)
    test_decisions_match_on_small_vocabularies()
    test_decisions_match_on_long_texts()
    test_max_rouge_l_matches_rouge_score_on_small_vocabularies()
    test_nearest_rouge_l_names_the_first_pool_text_at_the_maximum()
    test_nearest_rouge_l_names_the_first_of_repeated_pool_texts()
    test_nearest_rouge_l_looks_only_above_a_given_f1()


def test_duplicates_among_candidates():
    pool = ["What is the capital of France?"]
    cands = [
        "Name three primary colours.",
        "Name three primary colours.",  # copy of a kept candidate: dropped
        "what is THE capital of france",  # same tokens as the pool item: dropped
        "what is THE capital of france",  # copy of a dropped candidate: dropped by the pool
        "Write a haiku about autumn leaves.",
        "Write a haiku about autumn leaves!!",
    ]
    assert filter_novel(cands, pool) == [True, False, False, False, True, False]
    assert filter_novel(cands, pool) == reference(cands, pool)[0]


def test_edge_cases():
    assert filter_novel([], ["anything"]) == []
    assert filter_novel(["a b c"], []) == [True]  # nothing to compare with
    # Empty and punctuation-only texts have no tokens: F1 0 with everything, never dropped.
    cands = ["", "", "?!...", "a b c", ""]
    assert filter_novel(cands, ["", "---"]) == [True] * 5
    assert filter_novel(cands, ["a b c"]) == [True, True, True, False, True]
    for threshold in (0.0, 1.0, 1.5, -0.1, float("nan"), np.float32(0.7), 1):
        pool, cands = ["a b c", ""], ["a b c", "a b", "", "x y", "x y"]
        expected = reference(cands, pool, float(threshold))[0]
        assert filter_novel(cands, pool, threshold) == expected, threshold
        assert filter_novel(cands, [], threshold) == reference(cands, [], float(threshold))[0]


def test_bad_input_is_named():
    with pytest.raises(DataError, match=r"candidates\[1\]"):
        filter_novel(["ok", None], [])
    with pytest.raises(DataError, match=r"pool\[0\]"):
        filter_novel(["ok"], [b"bytes"])
    with pytest.raises(ConfigError, match="threshold"):
        filter_novel(["ok"], [], "0.7")


# --- highest F1 against the pool (diversity statistics) ----------------------------------------


KERNELS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not join_kernel.available(), reason="numba is not installed"))]  # fmt: skip


def reference_max(candidates, pool):
    """rouge_score's F1 of each candidate against every pool text; the highest, 0.0 if none."""
    pool_tokens = [rouge_tokens(p) for p in pool]
    counts = [Counter(t) for t in pool_tokens]
    return [best_f1(rouge_tokens(c), pool_tokens, counts) or 0.0 for c in candidates]


def small_vocab_cases(seed, cases, letters, max_len, max_pool, max_cands, min_pool=0):
    """(rng, candidates, pool) of `cases` random cases: texts of 0 to `max_len` words over the
    first 2 or more of `letters`, so that repeats and ties are everywhere."""
    rng = random.Random(seed)
    for _ in range(cases):
        vocab = letters[: rng.randint(2, len(letters))]

        def text(vocab=vocab):
            return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, max_len)))

        pool = [text() for _ in range(rng.randint(min_pool, max_pool))]
        yield rng, [text() for _ in range(rng.randint(1, max_cands))], pool


def test_max_rouge_l_matches_rouge_score_on_small_vocabularies():
    for rng, cands, pool in small_vocab_cases(11, 150, "abcdefghij", 20, 30, 20):
        cands += rng.sample(pool, min(2, len(pool)))
        assert max_rouge_l(cands, pool) == reference_max(cands, pool)


def test_max_rouge_l_matches_rouge_score_on_real_instructions(shared_data):
    """Real instructions and edits of them, with maxima at every level of the search (0.5 and
    above, 0.25-0.5, below 0.25), and texts long enough for multi-word bit vectors."""
    rng = random.Random(12)
    data = {k: list(v) for k, v in instruction_texts(shared_data).items()}
    for group in data.values():
        rng.shuffle(group)
    pool = data["gsm8k"][:150] + data["toolformer"][:100] + data["seed"][:100]
    held_out = data["gsm8k"][150:160] + data["toolformer"][100:105] + data["seed"][100:115]
    words = [w for t in pool for w in t.split()]
    cands = [near_duplicate(rng.choice(pool), rng.uniform(0.1, 0.8), rng, words) for _ in range(20)]
    cands += held_out + rng.sample(pool, 2) + ["", "?!"]
    got = max_rouge_l(cands, pool)
    want = reference_max(cands, pool)
    assert got == want
    assert sum(w > 0.5 for w in want) >= 5 and sum(0.25 <= w <= 0.5 for w in want) >= 5
    assert sum(0 < w < 0.25 for w in want) >= 2 and 1.0 in want


def test_nearest_rouge_l_names_the_first_pool_text_at_the_maximum():
    """The index of the nearest pool text is rouge_score's argmax over every pair (the lowest
    index on a tie), -1 when nothing is shared."""
    for _, cands, pool in small_vocab_cases(13, 60, "abcdef", 12, 25, 12):
        best, where = nearest_rouge_l(cands, pool)
        for c, b, w in zip(cands, best, where, strict=True):
            scores = [SCORER.score(p, c)["rougeL"].fmeasure for p in pool]
            top = max(scores, default=0.0)
            assert b == top
            assert w == (scores.index(top) if top > 0 else -1)
    assert nearest_rouge_l(["x y", "a b c", "q"], ["a b", "a b c d", "a b c"]) == (
        [0.0, 1.0, 0.0],
        [-1, 2, -1],
    )


def test_max_rouge_l_edge_cases():
    assert max_rouge_l([], ["a b"]) == []
    assert max_rouge_l(["a b", ""], []) == [0.0, 0.0]
    assert max_rouge_l(["a b c", "x y", "", "?!"], ["a b c", "", "z"]) == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(DataError, match=r"pool\[1\]"):
        max_rouge_l(["ok"], ["fine", None])


def test_nearest_rouge_l_looks_only_above_a_given_f1():
    """With `above`, a candidate gets the nearest pool text only where its F1 is strictly above
    the value given (ties with it included: 0.0 and -1); else what it gets without."""
    for rng, cands, pool in small_vocab_cases(14, 40, "abcde", 10, 20, 12, min_pool=1):
        best, where = nearest_rouge_l(cands, pool)
        above = [rng.choice([b, 0.0, rng.random(), max(b - 0.1, 0.0), 1.0]) for b in best]
        got = nearest_rouge_l(cands, pool, above)
        want = [(b, w) if b > a else (0.0, -1) for b, w, a in zip(best, where, above, strict=True)]
        assert list(zip(*got, strict=True)) == want
    for wrong in ([0.1, 0.2], 0.5, [None]):
        with pytest.raises(ValueError, match="above"):
            nearest_rouge_l(["a"], ["a"], wrong)


def test_nearest_rouge_l_names_the_first_of_repeated_pool_texts():
    """The search runs over distinct texts: a pool text repeated (one instruction, many inputs)
    is found at its first index, a tie between two repeated texts goes to the one first seen,
    and repeated candidates get the same answer."""
    pool = ["a b d", "a b d", "q", "x y", "a b c", "x y", "q", "a b c"]
    cands = ["a b c", "x y", "a b", "a b c", "zz", "q"]
    assert nearest_rouge_l(cands, pool) == ([1.0, 1.0, 0.8, 1.0, 0.0, 1.0], [4, 3, 0, 4, -1, 2])


@pytest.mark.parametrize("kernel", KERNELS)
def test_nearest_search_through_the_join_matches_rouge_score(kernel, monkeypatch):
    """The maxima and nearest texts above, with the join forced at every level of the search
    (the product path otherwise takes inputs this small), counted by numpy and by the compiled
    kernel."""
    from lion_core.method import novelty

    monkeypatch.setattr(novelty, "_JOIN_MODE", "always")
    monkeypatch.setattr(novelty, "_JOIN_KERNEL", kernel)
    test_max_rouge_l_matches_rouge_score_on_small_vocabularies()
    test_nearest_rouge_l_names_the_first_pool_text_at_the_maximum()
    test_nearest_rouge_l_names_the_first_of_repeated_pool_texts()
    test_nearest_rouge_l_looks_only_above_a_given_f1()
    test_max_rouge_l_edge_cases()


@pytest.mark.parametrize("kernel", KERNELS)
def test_max_rouge_l_through_the_join_on_real_instructions(kernel, shared_data, monkeypatch):
    from lion_core.method import novelty

    monkeypatch.setattr(novelty, "_JOIN_MODE", "always")
    monkeypatch.setattr(novelty, "_JOIN_KERNEL", kernel)
    test_max_rouge_l_matches_rouge_score_on_real_instructions(shared_data)


# --- the fast tokenizer and the set-similarity join ---------------------------------------------


def _same_tokens(texts: list[str]) -> None:
    """`_token_ids` gives every text `tokenize`'s tokens: the same counts, equal ids exactly for
    equal tokens."""
    from lion_core.method.novelty import _token_ids

    ids, lengths, n_vocab = _token_ids(texts)
    expected = [tokenize(t) for t in texts]
    assert lengths.tolist() == [len(e) for e in expected]
    word_of: dict[int, str] = {}
    for i, word in zip(ids.tolist(), [w for e in expected for w in e], strict=True):
        assert word_of.setdefault(i, word) == word, (i, word, word_of[i])
    assert len(set(word_of.values())) == len(word_of) == n_vocab


def test_fast_token_ids_match_tokenize(shared_data, monkeypatch):
    """The bytes-level tokenizer against `tokenize` (itself checked against rouge_score above):
    real instructions, Unicode, NULs (a chunk with one is tokenised text by text), lone
    surrogates, tokens of every length around the 10 packed characters, chunk boundaries."""
    from lion_core.method import novelty

    data = instruction_texts(shared_data)
    _same_tokens([t for group in data.values() for t in group] + UNICODE_CASES)
    rng = random.Random(21)
    alphabet = "aZ09 .\x00İK\u212a\u0130ßΣσς東\ud800é\n\t-_" + "abcdefXYZ" * 3
    odd = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    odd += ["a" * n for n in range(1, 25)] + ["Q" * n + "9" * n for n in range(1, 13)]
    monkeypatch.setattr(novelty, "_TEXTS_PER_CHUNK", 7)
    _same_tokens(odd)
    _same_tokens([o.replace("\x00", " ") for o in odd])  # every chunk on the fast path
    _same_tokens([])
    _same_tokens(["", "\x00"])


def test_only_two_characters_lower_to_ascii():
    """The fast tokenizer maps non-ASCII characters to separators, except those whose lower()
    holds an ASCII letter or digit, replaced beforehand: checked against this Python's Unicode
    tables, so that an upgrade adding one fails here rather than changing tokens."""
    import re
    import sys

    from lion_core.method.novelty import _LOWER_TO_ASCII

    ascii_token = re.compile("[a-z0-9]")
    found = {
        chr(c): chr(c).lower()
        for c in range(128, sys.maxunicode + 1)
        if ascii_token.search(chr(c).lower())
    }
    assert set(found) == set(_LOWER_TO_ASCII)
    for char, lowered in _LOWER_TO_ASCII.items():
        assert tokenize(lowered) == tokenize(found[char])


def _bound_pairs(texts: list[str], n_queries: int, t: float) -> set[tuple[int, int]]:
    """Every (query, target) pair whose multiset token overlap lets F1 above t through the bound
    (overlap > h(la) + h(lb) - 1/2, h(l) = floor(2tl)/4), by brute force with Counters."""
    tokens = [Counter(tokenize(x)) for x in texts]
    lengths = [sum(c.values()) for c in tokens]

    def h(length: int) -> float:
        return math.floor(length * 2 * t) / 4

    return {
        (q, y)
        for q in range(n_queries)
        for y in range(n_queries, len(texts))
        if sum((tokens[q] & tokens[y]).values()) > h(lengths[q]) + h(lengths[y]) - 0.5
        and sum((tokens[q] & tokens[y]).values()) > 0
    }


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_join_proposes_every_pair_the_bound_lets_through(t, kernel, monkeypatch):
    """The join's candidate search is complete: every pair that passes the overlap bound (the
    product path's survivors) is proposed, for texts from 1 token (need 1) to 150 (several
    words), small vocabularies (repeats everywhere), thresholds from 0 to 0.99; with the
    blocks counted by numpy and by the compiled kernel."""
    from lion_core.method import novelty
    from lion_core.method.novelty import _Corpus, _Join

    monkeypatch.setattr(novelty, "_JOIN_KERNEL", kernel)
    rng = random.Random(int(t * 100) + 5)
    texts = []
    for _ in range(260):
        vocab = "abcdefghijklmnopqrst"[: rng.choice([2, 5, 20])]
        n = rng.choice([0, 1, 2, 3, rng.randint(4, 30), rng.randint(60, 150)])
        texts.append(" ".join(rng.choice(vocab) for _ in range(n)))
    texts += [near_duplicate(x, 0.2, rng, list("abcdefg")) for x in texts[:60]]
    rng.shuffle(texts)
    n_queries = 90
    corpus = _Corpus(texts)
    join = _Join(corpus, np.arange(n_queries), np.arange(n_queries, len(texts)), t)
    proposed = set()
    nobody = np.zeros(n_queries, dtype=bool)
    for round_no in range(len(join.rounds)):
        for q_pos, t_docs, bound in join.survivors(round_no, nobody):
            assert (bound >= 1).all()
            proposed |= set(zip(q_pos.tolist(), t_docs.tolist(), strict=True))
    expected = _bound_pairs(texts, n_queries, t)
    assert expected <= proposed
    assert len(proposed) <= 2 * len(expected) + 10  # the sketch bound keeps it close


@pytest.mark.parametrize(
    "check",
    [
        test_decisions_match_on_small_vocabularies,
        test_decisions_match_on_long_texts,
        test_duplicates_among_candidates,
        test_edge_cases,
        test_threshold_ties_cover_both_outcomes,
    ],
)
@pytest.mark.parametrize("chunks", [None, (2, 3)])
@pytest.mark.parametrize("kernel", KERNELS)
def test_join_makes_the_same_decisions(check, chunks, kernel, monkeypatch):
    """The equivalence tests above, with the join forced wherever it may run (the product path
    otherwise takes inputs this small), its blocks counted by numpy and by the compiled kernel;
    and with the candidates resolved among themselves in chunks of 2 (3 from 24 candidates), so
    that earlier kept ones are a pool of their own."""
    from lion_core.method import novelty

    monkeypatch.setattr(novelty, "_JOIN_MODE", "always")
    monkeypatch.setattr(novelty, "_JOIN_KERNEL", kernel)
    if chunks:
        monkeypatch.setattr(novelty, "_ORDER_CHUNK", chunks[0])
        monkeypatch.setattr(novelty, "_ORDER_CHUNK_LARGE", chunks[1])
    check()


@pytest.mark.skipif(not join_kernel.available(), reason="numba is not installed")
@pytest.mark.parametrize("t", [0.3, 0.5, 0.7])
def test_compiled_kernel_yields_what_numpy_yields(t, monkeypatch):
    """The compiled block (join_kernel) and the numpy block give the join the same pairs with
    the same bounds in each round (the kernel's order within a query differs), and count the
    same entries and sketched pairs: texts of 1 to 40 tokens over vocabularies of 3 to 60
    words, both rounds, several chunks of targets and blocks of queries."""
    from lion_core.method import novelty
    from lion_core.method.novelty import _Corpus, _Join

    monkeypatch.setattr(novelty, "_JOIN_TARGETS", 1 << 10)  # several chunks of targets
    monkeypatch.setattr(novelty, "_CHUNK_BITS", 10)
    monkeypatch.setattr(novelty, "_JOIN_BLOCK", 1 << 12)  # several blocks per chunk
    rng = random.Random(int(t * 10))
    words = [f"w{i}" for i in range(60)]
    texts = [
        " ".join(rng.choice(words[: rng.randint(3, 60)]) for _ in range(rng.randint(1, 40)))
        for _ in range(2700)
    ]
    texts += [near_duplicate(x, 0.3, rng, words) for x in texts[:300]]  # pairs near t
    rng.shuffle(texts)
    corpus, n_queries = _Corpus(texts), 300
    seen = {}
    for kernel in ("numpy", "numba"):
        monkeypatch.setattr(novelty, "_JOIN_KERNEL", kernel)
        join = _Join(corpus, np.arange(n_queries), np.arange(n_queries, len(texts)), t)
        nobody = np.zeros(n_queries, dtype=bool)
        out = [
            sorted(
                triple
                for q_pos, t_docs, bound in join.survivors(round_no, nobody)
                for triple in zip(q_pos.tolist(), t_docs.tolist(), bound.tolist(), strict=True)
            )
            for round_no in range(len(join.rounds))
        ]
        seen[kernel] = (out, join.expanded, join.sketched)
    assert all(seen["numpy"][0]), "a round proposed no pair: the test proves nothing"
    assert seen["numba"] == seen["numpy"]


def test_join_counts_in_numpy_where_numba_does_not_import(monkeypatch):
    """numba installed but not importable (built for another numpy, say): the join falls back
    to its numpy blocks, with the same decisions, instead of failing in a worker thread."""
    import sys

    from lion_core.method import novelty
    from lion_core.method.novelty import _Corpus, _Join

    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.setattr(join_kernel, "_compiled", None)
    monkeypatch.setattr(novelty, "_JOIN_MODE", "always")
    texts = ["a b c d e f", "q r s t u", "x y z w", "a b c d e f"]
    assert not _Join(_Corpus(texts), np.arange(2), np.arange(2, 4), 0.7).compiled
    assert filter_novel(texts[:2], texts[2:]) == [False, True]


def test_join_at_the_threshold(monkeypatch):
    from lion_core.method import novelty

    monkeypatch.setattr(novelty, "_JOIN_MODE", "always")
    for lcs, la, lb, threshold in [(7, 10, 10, 0.7), (7, 7, 13, 0.7), (14, 20, 20, 0.7)]:
        test_scores_exactly_at_the_threshold(lcs, la, lb, threshold)


def test_join_engages_prunes_and_matches_rouge_score(shared_data):
    """A pool big enough for the join to be chosen on its own (300 candidates x 30,000 pool
    texts, 9M pairs): it expands a small fraction of the pairs, and the decisions are those
    of rouge_score. The reference finds the pairs that matter independently (the multiset
    token overlap of every pair, numpy over rouge_score's tokens: F1 <= 2 overlap / (la + lb)),
    scores them with rouge_score's `_score_lcs` and replays the original loop."""
    rng = random.Random(31)
    data = instruction_texts(shared_data)
    texts = [t for group in data.values() for t in group]
    rng.shuffle(texts)
    words = [w for t in texts for w in t.split()]
    half = len(texts) // 2
    pool = texts[:half]
    while len(pool) < 30_000:
        pool.append(near_duplicate(rng.choice(texts[:half]), rng.uniform(0.1, 0.6), rng, words))
    candidates = [
        near_duplicate(
            rng.choice(texts[half:] if rng.random() < 0.7 else texts[:half]),
            rng.uniform(0.05, 0.5),
            rng,
            words,
        )
        for _ in range(280)
    ]
    candidates += rng.sample(candidates, 10) + rng.sample(pool, 10)

    stats = NoveltyStats()
    got = filter_novel(candidates, pool, stats=stats)
    assert stats.expanded > 0  # the join ran, not the product
    assert stats.expanded < stats.pairs / 10 and stats.sketched < stats.pairs / 50

    # the reference: multiset overlaps of all (candidate, text) pairs over (token, k) features
    tok = [rouge_tokens(x) for x in candidates + pool]
    feature: dict[tuple[str, int], int] = {}
    feats = []
    for words_ in tok:
        seen: Counter = Counter()
        row = []
        for w in words_:
            row.append(feature.setdefault((w, seen[w]), len(feature)))
            seen[w] += 1
        feats.append(row)
    flat = np.array([f for row in feats for f in row], dtype=np.int64)
    lengths = np.array([len(row) for row in feats])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    nonempty = lengths > 0
    n_c = len(candidates)
    keep: list[bool] = []
    for i in range(n_c):
        mine = np.zeros(len(feature) + 1, dtype=np.int64)
        mine[feats[i]] = 1
        overlap = np.zeros(len(tok), dtype=np.int64)
        overlap[nonempty] = np.add.reduceat(mine[flat], starts[nonempty])
        others = [j for j in range(n_c, len(tok))] + [j for j in range(i) if keep[j]]
        others = np.array(others, dtype=np.int64)
        bound = 2 * overlap[others] / np.maximum(lengths[i] + lengths[others], 1)
        close = others[bound > 0.7 - 1e-9][np.argsort(-bound[bound > 0.7 - 1e-9], kind="stable")]
        scores = (rouge_scorer._score_lcs(tok[i], tok[j]).fmeasure for j in close.tolist())
        keep.append(not any(f > 0.7 for f in scores))  # stops at the first pair above
    assert got == keep
    assert 20 <= sum(keep) <= n_c - 20  # decisions go both ways
