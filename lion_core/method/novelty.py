"""The novelty filter: drop a generated instruction whose ROUGE-L F1 with any pool instruction, or
with any instruction kept before it, is above a threshold (the paper's 0.7).

Exact: the decisions are those of `rouge_score.rouge_scorer.RougeScorer(["rougeL"])` (no stemming)
bit for bit — same tokens (lowercase, runs of ``[a-z0-9]``), same LCS length, same floating-point
F-measure ``2 * p * r / (p + r)`` with ``p = lcs / len(pool)``, ``r = lcs / len(candidate)``, the
same strict ``>``. The original Lion loop scored every (candidate, pool) pair that way; at ~1,400
pairs/s per core, 6K candidates against a 70K pool took more than a day.

Fast: almost every pair is rejected by a cheap, *exact upper bound* on its F1 and never aligned.
F1 is ``2·lcs / (la + lb)``, and ``lcs`` is at most the multiset token overlap of the two texts,
so a pair with ``2·overlap / (la + lb)`` below the threshold can be skipped. The pairs the bound
lets through are found by a set-similarity join on large inputs (`_Join`: length and positional
prefix filters over a rarest-first order of (token, occurrence) features, then a sketch bound),
by one matrix product over the most shared tokens plus an inverted index on small ones; the few
survivors get their exact LCS from a bit-parallel algorithm vectorised over pairs, best-bounded
pair first, stopping at a candidate's first hit. See docs/novelty.md.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pandas as pd

from lion_core.errors import ConfigError, DataError
from lion_core.method import join_kernel

__all__ = [
    "NoveltyStats",
    "filter_novel",
    "max_rouge_l",
    "near_pool",
    "nearest_rouge_l",
    "rouge_l_f1",
    "tokenize",
]

# rouge_score.tokenize: lowercase, replace [^a-z0-9]+ by a space, split on whitespace, keep the
# tokens matching ^[a-z0-9]+$. After the replacement only [a-z0-9] and spaces are left, so the
# tokens are exactly the maximal runs of [a-z0-9] in the lowercased text.
_TOKEN_RE = re.compile(r"[a-z0-9]+")

# The overlap bound skips a pair only when overlap <= t·(la + lb)/2 - 1/2, i.e. when F1 is at
# most t - 1/(la + lb) in real arithmetic: far more than the few ulps by which rouge_score's
# floating-point F1 can differ from the real value, so a skipped pair certainly has F1 <= t.
_SLACK = 0.5
_BLOCK_CELLS = 1 << 21  # (query, target) cells per block of the overlap matrix
# Rough costs (s) of one multiply-add in the dense product and of one (query, target, feature)
# entry through the inverted index; they only steer how many features go to the product.
_COST_MAC = 1.5e-11
_COST_PAIR = 2.5e-8
_FLUSH = 1 << 16  # verify pending pairs once this many have piled up
_CHUNK_TEXTS = 256  # distinct bit-side texts per LCS chunk (size of the match-mask table)
_CHUNK_PAIRS = 1 << 17  # pairs per LCS chunk
_TABLE_CELLS = 1 << 22  # 64-bit words in one chunk's match-mask table (32 MB)
_ORDER_CHUNK = 1024  # candidates resolved among themselves at a time...
_ORDER_CHUNK_LARGE = 4096  # ...or this many, with 8 times as many candidates (fewer joins)
_WORD = 64
_WORKERS = min(2, os.cpu_count() or 1)  # threads scoring blocks
_HEAVY_WORDS = 2  # sketch words of exact bits for the most frequent features (see _Corpus.sketch)
_SKETCH_WORDS = 8  # 64-bit words per text in the sketch bound


def tokenize(text: str) -> list[str]:
    """rouge_score's default tokens (no stemming) of `text`."""
    return _TOKEN_RE.findall(text.lower())


# The same tokens, fast, for many texts at once. Texts are joined by " \x00 ", encoded as UTF-8
# and mapped byte by byte to digits: "0"-"9" -> 1..10, letters of either case -> 11..36 (rouge_score
# lowercases), the NUL between texts -> 63, anything else -> 0, a separator (the bytes of a
# non-ASCII character are all >= 0x80, so they separate too). Tokens are then the maximal runs of
# non-zero bytes, exactly the runs of [a-z0-9] in text.lower(), with two exceptions handled before
# encoding: the only characters whose lower() holds an ASCII letter or digit (tests check this
# against the running Python's Unicode tables).
_DIGITS = bytes(
    63
    if c == 0
    else c - 47
    if 48 <= c <= 57
    else c - 86
    if 97 <= c <= 122
    else c - 54
    if 65 <= c <= 90
    else 0
    for c in range(256)
)
_LOWER_TO_ASCII = {"\u0130": "i ", "\u212a": "k"}  # "İ".lower() == "i̇", "K".lower() == "k"
_TEXT_SEP = 63
_PACKED = 10  # tokens of up to 10 characters are packed 6 bits a character; longer ones looked up
_LONG = 1 << 61  # codes of the longer tokens start here (packed ones are below 64**10 = 2**60)
_TEXTS_PER_CHUNK = 1 << 14


def _token_ids(texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Every text's tokens (those of `tokenize`) as int32 ids, all texts end to end; the number
    of tokens per text; the number of distinct tokens. Equal tokens get equal ids."""
    long_words: dict[bytes, int] = {}
    codes, counts = [], []
    for lo in range(0, len(texts), _TEXTS_PER_CHUNK):
        chunk = texts[lo : lo + _TEXTS_PER_CHUNK]
        joined = " \x00 ".join(chunk)
        if joined.count("\x00") != len(chunk) - 1:  # a text holds a NUL: one text at a time
            code, count = _codes_one_by_one(chunk, long_words)
        else:
            for char, lowered in _LOWER_TO_ASCII.items():
                if char in joined:
                    joined = joined.replace(char, lowered)
            digits = joined.encode("utf-8", "surrogatepass").translate(_DIGITS)
            code, count = _codes(digits, long_words)
        codes.append(code)
        counts.append(count)
    code = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
    lengths = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    ids, vocab = pd.factorize(code)  # a hash table: far faster than sorting 10**7 codes
    return ids.astype(np.int32), lengths.astype(np.int64), len(vocab)


def _codes(digits: bytes, long_words: dict[bytes, int]) -> tuple[np.ndarray, np.ndarray]:
    """Token codes of texts given as `_DIGITS` bytes joined by separators, and tokens per text.
    A code is the token's digits packed 6 bits each (unique for up to `_PACKED` characters), or
    `_LONG` plus the token's index in `long_words`."""
    a = np.frombuffer(digits, dtype=np.uint8)
    edge = np.flatnonzero(np.diff((a != 0).view(np.int8), prepend=0, append=0))
    starts, ends = edge[0::2], edge[1::2]
    n = (ends - starts).astype(np.uint64)
    # 8 bytes from any offset, big-endian: the token's first characters in the top bytes
    padded = digits + bytes(16)
    window = np.ndarray((len(padded) - 7,), dtype=">u8", buffer=padded, strides=(1,))
    first = window[starts].astype(np.uint64)
    eight = np.uint64(8)
    code = _pack6(first >> (eight * (eight - np.minimum(n, eight))))
    mid = np.flatnonzero((n > eight) & (n <= _PACKED))
    if len(mid):
        rest = n[mid] - eight
        second = window[starts[mid] + 8].astype(np.uint64) >> (eight * (eight - rest))
        code[mid] = (_pack6(first[mid]) << (np.uint64(6) * rest)) | _pack6(second)
    code = code.astype(np.int64)
    for i in np.flatnonzero(n > _PACKED).tolist():
        word = digits[starts[i] : ends[i]]
        code[i] = _LONG + long_words.setdefault(word, len(long_words))
    sep = np.flatnonzero(code == _TEXT_SEP)  # a separator is a run of its own (spaces around)
    count = np.diff(np.concatenate([[-1], sep, [len(code)]])) - 1
    return np.delete(code, sep), count


def _pack6(x: np.ndarray) -> np.ndarray:
    """Eight bytes below 64 each (big-endian in a uint64) packed into 48 bits, 6 per byte."""
    m16, m32 = np.uint64(0x00FF00FF00FF00FF), np.uint64(0x0000FFFF0000FFFF)
    x = (((x >> np.uint64(8)) & m16) << np.uint64(6)) | (x & m16)
    x = (((x >> np.uint64(16)) & m32) << np.uint64(12)) | (x & m32)
    return ((x >> np.uint64(32)) << np.uint64(24)) | (x & np.uint64(0xFFFFFFFF))


def _codes_one_by_one(
    texts: list[str], long_words: dict[bytes, int]
) -> tuple[np.ndarray, np.ndarray]:
    """`_codes` for texts that may hold NULs: `tokenize` each, then the same codes."""
    code, count = [], []
    for text in texts:
        words = tokenize(text)
        count.append(len(words))
        for word in words:
            digits = word.encode("ascii").translate(_DIGITS)
            if len(digits) <= _PACKED:
                code.append(_pack_int(digits))
            else:
                code.append(_LONG + long_words.setdefault(digits, len(long_words)))
    return np.array(code, dtype=np.int64), np.array(count, dtype=np.int64)


def _pack_int(digits: bytes) -> int:
    value = 0
    for d in digits:
        value = value << 6 | d
    return value


def rouge_l_f1(target: Sequence[str], prediction: Sequence[str]) -> float:
    """ROUGE-L F1 of two token lists, with rouge_score's arithmetic (`_score_lcs`)."""
    if not target or not prediction:
        return 0.0
    lcs = _lcs_python(list(target), list(prediction))
    return _fmeasure(lcs, len(target), len(prediction))


def _fmeasure(lcs: int, len_target: int, len_prediction: int) -> float:
    precision = lcs / len_prediction
    recall = lcs / len_target
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _lcs_python(a: list, b: list) -> int:
    """LCS length, bit-parallel over Python ints (Hyyrö 2004)."""
    masks: dict = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


@dataclass
class NoveltyStats:
    """What one `filter_novel` call did (filled in when passed as `stats=`)."""

    candidates: int = 0
    pool: int = 0
    kept: int = 0
    dropped_by_pool: int = 0
    dropped_by_candidates: int = 0
    pairs: int = 0  # comparisons the original loop makes: every candidate x (pool + kept before)
    bound_survivors: int = 0  # pairs whose overlap bound allowed F1 > threshold
    expanded: int = 0  # (probe, index entry) matches the join expanded (0 on the product path)
    sketched: int = 0  # distinct pairs the join bounded with sketches
    aligned: int = 0  # pairs whose exact LCS was computed
    seconds: float = 0.0


def filter_novel(
    candidates: list[str],
    pool: list[str],
    threshold: float = 0.7,
    *,
    stats: NoveltyStats | None = None,
) -> list[bool]:
    """One keep flag per candidate: False when its ROUGE-L F1 with a pool instruction or with a
    candidate kept before it is strictly greater than `threshold`.

    Candidates are taken in order, as the original loop did: a dropped candidate is not compared
    with later ones. With nothing to compare against, a candidate is kept. Pass a `NoveltyStats`
    as `stats` to get counts and timing.
    """
    started = time.perf_counter()
    _check_texts(candidates, pool)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ConfigError(f"novelty threshold must be a number, got {threshold!r}")
    t = float(threshold)
    n = len(candidates)
    st = stats if stats is not None else NoveltyStats()
    st.candidates, st.pool = n, len(pool)
    keep = np.ones(n, dtype=bool)
    by_pool = np.zeros(n, dtype=bool)
    if math.isnan(t):
        pass  # no comparison is true: the reference keeps everything
    elif t < 0:  # every F1 (>= 0) exceeds it: only a first candidate with an empty pool survives
        keep[:] = False
        keep[0:1] = not pool
        by_pool[:] = bool(pool)
    elif t >= 1:
        pass  # F1 <= 1.0 always (the computed one too): nothing exceeds it
    elif n:
        corpus = _Corpus(list(candidates) + list(pool))
        cand = np.arange(n)
        # 1. Against the pool: all candidates at once; each stops at its first hit.
        if len(pool):
            by_pool = _hits_any(corpus, cand, np.arange(n, n + len(pool)), t, st)
            keep &= ~by_pool
        # 2. Against the candidates kept before, in chunks, in order: a chunk is checked
        #    against the candidates kept in earlier chunks (like a pool), then within itself.
        step = _ORDER_CHUNK if n < 8 * _ORDER_CHUNK_LARGE else _ORDER_CHUNK_LARGE
        for lo in range(0, n, step):
            chunk = cand[lo : lo + step]
            chunk = chunk[keep[chunk]]
            earlier = np.flatnonzero(keep[:lo])
            if len(chunk) and len(earlier):
                keep[chunk[_hits_any(corpus, chunk, earlier, t, st)]] = False
                chunk = chunk[keep[chunk]]
            if len(chunk) > 1:
                keep[chunk] = _resolve_in_order(corpus, chunk, t, st)
    st.kept = int(keep.sum())
    st.dropped_by_pool = int(by_pool.sum())
    st.dropped_by_candidates = n - st.kept - st.dropped_by_pool
    kept_before = np.concatenate([[0], np.cumsum(keep)[:-1]]) if n else np.zeros(0)
    st.pairs = int(n * len(pool) + kept_before.sum())
    st.seconds = time.perf_counter() - started
    return keep.tolist()


def near_pool(candidates: list[str], pool: list[str], threshold: float) -> list[bool]:
    """One flag per candidate: True when its ROUGE-L F1 with some pool text is strictly greater
    than `threshold` (the first stage of `filter_novel` alone: candidates are not compared with
    each other). Each candidate stops at its first hit, so this is far cheaper than
    `max_rouge_l` when most candidates are near the pool."""
    _check_texts(candidates, pool)
    if not candidates or not pool:
        return [False] * len(candidates)
    corpus = _Corpus(list(candidates) + list(pool))
    n = len(candidates)
    hits = _hits_any(
        corpus, np.arange(n), np.arange(n, n + len(pool)), float(threshold), NoveltyStats()
    )
    return hits.tolist()


def _check_texts(candidates: list[str], pool: list[str]) -> None:
    for name, texts in (("candidates", candidates), ("pool", pool)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"{name}[{i}] is a {type(text).__name__}, expected a str")


# Thresholds `max_rouge_l` tries in turn: a candidate whose best F1 found at a level is at least
# that level is settled (every pair the bound skipped there has F1 < the level); the others go
# on to the next, lower level. The last level, 0, lets every pair through the bound. High levels
# first: most generated instructions are near some pool text, and a level lets through every pair
# whose bound reaches it, so settling at 0.9 or 0.8 aligns far fewer pairs than at 0.5 (on a 10x
# offline round, where one template has thousands of pool texts at F1 0.8, half the time).
_MAX_LEVELS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.25, 0.0)
# A pair is aligned only if its real-arithmetic bound 2*overlap/(la + lb) reaches the best F1
# found so far minus this margin (far above the few ulps by which a float F1 can exceed it).
_BOUND_MARGIN = 1e-9


def max_rouge_l(candidates: list[str], pool: list[str]) -> list[float]:
    """Each candidate's highest ROUGE-L F1 against the pool (rouge_score's value exactly; 0.0
    with an empty pool or no shared token): what the novelty filter compares to its threshold.

    `filter_novel` cannot give this for free: its bound skips every pair that cannot exceed the
    threshold and it stops at a candidate's first hit, so it never learns the maximum. This
    reuses the same machinery as a branch and bound: at each of `_MAX_LEVELS` the join (or the
    product, where `_join_for` picks it) yields the pairs whose overlap bound allows F1 above
    the level, and only those whose bound also reaches the candidate's best so far are aligned,
    highest overlap first. Cost: one pass per level for the candidates still open, plus the
    alignments; it grows with the pairs near the candidates, not with all pairs.
    """
    return nearest_rouge_l(candidates, pool)[0]


def nearest_rouge_l(
    candidates: list[str], pool: list[str], above: Sequence[float] | None = None
) -> tuple[list[float], list[int]]:
    """Each candidate's highest ROUGE-L F1 against the pool (as `max_rouge_l`) and the index
    of the pool text that reaches it — the lowest such index when several do; -1 when the best
    is 0.0 (an empty pool, or no shared token).

    `above`: per candidate, an F1 the caller already has from elsewhere; only pool texts
    strictly above it are looked for (0.0 and -1 where there is none), which spares the search
    the levels below it."""
    _check_texts(candidates, pool)
    floor = np.zeros(len(candidates)) if above is None else np.asarray(above, dtype=np.float64)
    if floor.shape != (len(candidates),) or np.isnan(floor).any():
        raise ValueError(f"above: one F1 per candidate ({len(candidates)}), got {above!r:.200}")
    if not candidates or not pool:
        return [0.0] * len(candidates), [-1] * len(candidates)
    # Equal texts score alike: search the distinct ones (a pool repeats an instruction once per
    # input, thousands of times in the offline world), the first of equal pool texts standing
    # for all of them, so that the lowest index still wins a tie.
    cand_first, cand_of = _distinct(list(zip(candidates, floor.tolist(), strict=True)))
    pool_first, _ = _distinct(pool)
    best, where = _nearest_distinct(
        [candidates[i] for i in cand_first], [pool[i] for i in pool_first], floor[cand_first]
    )
    found = where >= 0
    where[found] = pool_first[where[found]]
    return best[cand_of].tolist(), where[cand_of].tolist()


def _distinct(items: list) -> tuple[np.ndarray, np.ndarray]:
    """The index of each distinct item's first appearance, in order, and each item's position
    among the distinct ones."""
    first: dict[object, int] = {}
    of = np.fromiter((first.setdefault(x, len(first)) for x in items), np.int64, len(items))
    return np.unique(of, return_index=True)[1], of


def _nearest_distinct(
    candidates: list[str], pool: list[str], floor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`nearest_rouge_l` for non-empty lists, as arrays, with `above` as `floor`."""
    n = len(candidates)
    # The best F1 so far per candidate, from its floor: a candidate whose floor reaches a level
    # is settled there as if it had found that F1.
    best = floor.copy()
    arg = np.full(n, -1, dtype=np.int64)
    corpus = _Corpus(list(candidates) + list(pool))
    cand = np.arange(n)
    targets = np.arange(n, n + len(pool))
    # The best target so far per candidate; beyond every target while none is found, so that
    # the first pair found at F1 0.0 is no better than none.
    where = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    open_ = np.ones(n, dtype=bool)
    for level in _MAX_LEVELS:
        live = np.flatnonzero(open_)
        if not len(live):
            break
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        n_pending = 0
        for q_pos, t_docs, overlap in _all_survivors(corpus, cand[live], targets, level):
            q_docs = live[q_pos]
            bound = 2.0 * overlap / np.maximum(corpus.lengths[q_docs] + corpus.lengths[t_docs], 1)
            keep = bound >= best[q_docs] - _BOUND_MARGIN
            pending.append((q_docs[keep], t_docs[keep], bound[keep]))
            n_pending += int(keep.sum())
            if n_pending >= _FLUSH:
                _raise_best(corpus, pending, best, where)
                pending, n_pending = [], 0
        if pending:
            _raise_best(corpus, pending, best, where)
        open_[live] = best[live] < level
    found = (best > 0) & (best > floor)
    arg[found] = where[found] - n
    return np.where(found, best, 0.0), arg


def _raise_best(
    corpus: _Corpus,
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    best: np.ndarray,
    where: np.ndarray,
) -> None:
    """Raise best[q] to the F1 of the pending pairs (q, t, bound) that may beat it, and set
    where[q] to the target reaching it (the lowest on a tie): in rounds, highest bound first
    per candidate, skipping pairs whose bound is below the best so far (a pair whose bound
    reaches the best within the margin is aligned, so no tie is missed)."""
    q_docs = np.concatenate([p[0] for p in pending])
    t_docs = np.concatenate([p[1] for p in pending])
    bound = np.concatenate([p[2] for p in pending])
    if not len(q_docs):
        return
    order = np.lexsort((-bound, q_docs))
    q_docs, t_docs, bound = q_docs[order], t_docs[order], bound[order]
    new_query = np.ones(len(q_docs), dtype=bool)
    new_query[1:] = q_docs[1:] != q_docs[:-1]
    starts = np.flatnonzero(new_query)
    rank = np.arange(len(q_docs)) - np.repeat(starts, np.diff(np.append(starts, len(q_docs))))
    for lo, hi in ((0, 1), (1, 4), (4, 16), (16, 64), (64, len(q_docs) + 1)):
        sel = (rank >= lo) & (rank < hi) & (bound >= best[q_docs] - _BOUND_MARGIN)
        if not sel.any():
            continue
        q, t = q_docs[sel], t_docs[sel]
        f = _f1_pairs(corpus, q, t)
        # per candidate, its best pair of this round (highest F1, then lowest target)
        first = np.lexsort((t, -f, q))
        q, t, f = q[first], t[first], f[first]
        head = np.ones(len(q), dtype=bool)
        head[1:] = q[1:] != q[:-1]
        q, t, f = q[head], t[head], f[head]
        better = (f > best[q]) | ((f == best[q]) & (t < where[q]))
        best[q[better]] = f[better]
        where[q[better]] = t[better]


class _Corpus:
    """All texts as int token ids, plus per-text occurrence features for the overlap bound.

    A text's features are (token, k) for the k-th occurrence of each token, so the number of
    features two texts share is exactly their multiset token overlap. Feature ids are ranks by
    frequency over all the texts, rarest first (0 = rarest), and each text's features are
    stored in that order: the global order the prefix filter of `_Join` needs.
    """

    def __init__(self, texts: list[str]) -> None:
        tokens, lengths, n_vocab = _token_ids(texts)
        self.n_vocab = max(n_vocab, 1)
        self.tokens = tokens
        self.lengths = lengths
        self.offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])

        # Number the repeats of a token within a text 0, 1, 2, ... (only the multiset matters,
        # so sort each text's tokens); repeat 0 of token w is feature w, later repeats get ids
        # after the vocabulary.
        doc = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        key = doc * self.n_vocab + tokens
        key.sort()  # the text stays the major key: every text keeps its place
        tok = key - doc * self.n_vocab
        at = np.arange(len(key), dtype=np.int64)
        run = np.ones(len(key), dtype=bool)
        run[1:] = key[1:] != key[:-1]
        del key
        repeat = at - np.maximum.accumulate(np.where(run, at, 0))
        del at, run
        feat, n_feat = tok, self.n_vocab
        rep = np.flatnonzero(repeat)
        if len(rep):
            code = tok[rep] * (int(repeat.max()) + 1) + repeat[rep]
            ids, distinct = pd.factorize(code)
            feat[rep] = self.n_vocab + ids
            n_feat += len(distinct)
        del repeat
        # Rank the features by frequency, rarest first, and sort each text's features so.
        order = np.argsort(np.bincount(feat, minlength=n_feat), kind="stable")
        rank = np.empty(n_feat, dtype=np.int64)
        rank[order] = np.arange(n_feat)
        key = doc * n_feat + rank[feat]
        del feat
        key.sort()
        key -= doc * n_feat
        self.feat = key.astype(np.int32 if n_feat < 1 << 31 else np.int64)
        self.n_feat = max(n_feat, 1)
        self._sketch: np.ndarray | None = None
        self._light: np.ndarray | None = None
        self._sketch_rows: np.ndarray | None = None

    def sketch(self) -> tuple[np.ndarray, np.ndarray]:
        """`_SKETCH_WORDS` 64-bit words per text (a column each) for a cheap exact bound on the
        overlap of two texts, and each text's number of light features. The first
        `_HEAVY_WORDS` words hold one bit per heavy feature (the most frequent ones) the text
        has; the others are a parity sketch of its light features (each hashed to one bit,
        XOR-ed), so the popcount of the XOR of two texts' parity words is at most the size of
        the symmetric difference of their light features. Hence
        overlap <= popcount(heavy a AND heavy b) + (light a + light b - that popcount) / 2.
        """
        if self._sketch is None:
            heavy_from = self.n_feat - min(_HEAVY_WORDS * _WORD, self.n_feat)
            f = self.feat.astype(np.int64)
            is_heavy = f >= heavy_from
            hashed = (
                (f.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
            ).astype(np.int64)
            n_light_bits = (_SKETCH_WORDS - _HEAVY_WORDS) * _WORD
            bit = np.where(is_heavy, f - heavy_from, _HEAVY_WORDS * _WORD + hashed % n_light_bits)
            word = bit // _WORD
            value = np.left_shift(np.uint64(1), (bit % _WORD).astype(np.uint64))
            doc = np.repeat(np.arange(len(self.lengths)), self.lengths)
            sketch = np.zeros((_SKETCH_WORDS, len(self.lengths)), dtype=np.uint64)
            # heavy bits are distinct within a text, so XOR is OR there
            np.bitwise_xor.at(sketch.reshape(-1), word * len(self.lengths) + doc, value)
            light = self.lengths - np.bincount(doc[is_heavy], minlength=len(self.lengths))
            self._light = light.astype(np.int32)
            self._sketch = sketch
        assert self._light is not None
        return self._sketch, self._light

    def sketch_rows(self) -> np.ndarray:
        """The sketch with each text's words side by side, (texts, `_SKETCH_WORDS`): one cache
        line a text, for the compiled join kernel, which reads a pair's words together."""
        if self._sketch_rows is None:
            self._sketch_rows = np.ascontiguousarray(self.sketch()[0].T)
        return self._sketch_rows


def _hits_any(
    corpus: _Corpus, queries: np.ndarray, targets: np.ndarray, t: float, st: NoveltyStats
) -> np.ndarray:
    """For each query text, whether its F1 with some target text is > t."""
    hit = np.zeros(len(queries), dtype=bool)
    join = _join_for(corpus, queries, targets, t)
    if join is None:
        phases = [lambda: _overlap_survivors(corpus, queries, targets, t, hit)]
    else:  # two rounds: the queries the first one drops never pay for the second
        phases = [lambda r=r: join.survivors(r, hit) for r in range(len(join.rounds))]
    for phase in phases:
        pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        n_pending = 0
        for survivors in phase():
            pending.append(survivors)
            n_pending += len(survivors[0])
            st.bound_survivors += len(survivors[0])
            if n_pending >= _FLUSH:
                _verify_first_hit(corpus, queries, pending, t, hit, st)
                pending, n_pending = [], 0
        if pending:
            _verify_first_hit(corpus, queries, pending, t, hit, st)
    if join is not None:
        st.expanded += join.expanded
        st.sketched += join.sketched
    return hit


def _all_survivors(
    corpus: _Corpus, queries: np.ndarray, targets: np.ndarray, t: float
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(query index, target text, overlap bound) of every pair the bound lets through, from the
    join or the product, whichever `_join_for` picks."""
    never = np.zeros(len(queries), dtype=bool)
    join = _join_for(corpus, queries, targets, t)
    if join is None:
        yield from _overlap_survivors(corpus, queries, targets, t, never)
    else:
        for round_no in range(len(join.rounds)):
            yield from join.survivors(round_no, never)


def _overlap_survivors(
    corpus: _Corpus, queries: np.ndarray, targets: np.ndarray, t: float, done: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (query index, target text, overlap) for every pair whose overlap bound allows
    F1 > t, block by block over the targets. Queries marked in `done` (by the consumer, between
    blocks) are left out of later blocks. Blocks run on `_WORKERS` threads: numpy and BLAS
    release the GIL, so both cores work."""
    heavy = _pick_heavy(corpus, queries, targets)
    column = np.full(corpus.n_feat, -1, dtype=np.int64)
    column[heavy] = np.arange(len(heavy))
    in_flight: deque[Future] = deque()
    side = None
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        start = 0
        while start < len(targets) or in_flight:
            while start < len(targets) and len(in_flight) < _WORKERS + 1:
                if side is None or (~done[side.live]).sum() < 0.9 * len(side.live):
                    live = np.flatnonzero(~done)
                    if len(live) == 0:
                        start = len(targets)
                        break
                    side = _QuerySide(corpus, queries, live, column, t)
                block = targets[start : start + side.block_size]
                start += len(block)
                in_flight.append(pool.submit(side.survivors, block))
            if not in_flight:
                break
            q_pos, t_docs, overlap = in_flight.popleft().result()
            fresh = ~done[q_pos]
            if fresh.any():
                yield q_pos[fresh], t_docs[fresh], overlap[fresh]


class _QuerySide:
    """The live query texts, ready to be scored against blocks of targets.

    The bound test is ``overlap > h(la) + h(lb) - slack`` with ``h(l) = t·l/2`` rounded down to
    a multiple of 1/4 (so the test only gets looser). One matrix product computes
    ``heavy overlap - h(lb) - (h(la) - slack)`` for a whole block (two extra columns carry the
    length terms); an inverted index (light feature -> query rows) adds the light overlap; the
    survivors are the cells > 0. Every term is a multiple of 1/4 far below 2**22, so float32
    computes all of it exactly, whatever order BLAS sums in.
    """

    def __init__(
        self, corpus: _Corpus, queries: np.ndarray, live: np.ndarray, column: np.ndarray, t: float
    ) -> None:
        self.corpus, self.column, self.half_t = corpus, column, t / 2
        self.live = live
        self.docs = queries[live]
        self.dtype = np.float32 if corpus.lengths.max(initial=0) < 1 << 20 else np.float64
        self.n_cols = int(column.max(initial=-1)) + 3
        rows, idx = _ragged(corpus.offsets, self.docs)
        f = corpus.feat[idx]
        col = column[f]
        heavy = col >= 0
        self.dense = np.zeros((len(self.docs), self.n_cols), dtype=self.dtype)
        self.dense[rows[heavy], col[heavy]] = 1
        self.dense[:, -2] = 1
        self.dense[:, -1] = -(self.h(self.docs) - _SLACK)
        lf, lr = f[~heavy], rows[~heavy]
        self.light_rows = lr[np.argsort(lf, kind="stable")]
        self.light_offsets = np.zeros(corpus.n_feat + 1, dtype=np.int64)
        np.cumsum(np.bincount(lf, minlength=corpus.n_feat), out=self.light_offsets[1:])
        self.block_size = max(64, min(4096, _BLOCK_CELLS // len(self.docs)))

    def h(self, docs: np.ndarray) -> np.ndarray:
        """t·len/2 rounded down to a multiple of 1/4."""
        return np.floor(self.corpus.lengths[docs] * (4 * self.half_t)) / 4

    def survivors(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query index, target text, overlap) of the pairs of `block` that pass the bound."""
        corpus, n_q = self.corpus, len(self.docs)
        rows, idx = _ragged(corpus.offsets, block)
        b_feat = corpus.feat[idx]
        b_col = self.column[b_feat]
        is_heavy = b_col >= 0
        dense = np.zeros((len(block), self.n_cols), dtype=self.dtype)
        dense[rows[is_heavy], b_col[is_heavy]] = 1
        dense[:, -2] = -self.h(block)
        dense[:, -1] = 1
        # score[b, q]: block rows outer, so that the scatter below walks memory row by row.
        score = dense @ self.dense.T
        lf, lr = b_feat[~is_heavy], rows[~is_heavy]
        first = self.light_offsets[lf]
        count = self.light_offsets[lf + 1] - first
        total = int(count.sum())
        if total:
            within = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
            cell = self.light_rows[np.repeat(first, count) + within]
            cell += np.repeat(lr * n_q, count)
            flat = score.reshape(-1)
            light = np.bincount(cell, minlength=len(flat))
            touched = np.flatnonzero(light)
            flat[touched] += light[touched]
        mask = score > 0
        hit_rows = np.flatnonzero(mask.any(axis=1))
        bi, qi = np.nonzero(mask[hit_rows])
        bi = hit_rows[bi]
        need = self.h(block[bi]) + self.h(self.docs[qi]) - _SLACK
        overlap = np.rint(score[bi, qi] + need).astype(np.int64)
        return self.live[qi], block[bi], overlap


def _pick_heavy(corpus: _Corpus, queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The features for the dense product: the most shared ones, as many as minimise the
    estimated time (the product grows with their number, the index with the others' pairs)."""
    _, q_idx = _ragged(corpus.offsets, queries)
    _, t_idx = _ragged(corpus.offsets, targets)
    q_count = np.bincount(corpus.feat[q_idx], minlength=corpus.n_feat).astype(np.float64)
    t_count = np.bincount(corpus.feat[t_idx], minlength=corpus.n_feat).astype(np.float64)
    pairs = q_count * t_count
    order = np.argsort(-pairs, kind="stable")
    order = order[pairs[order] > 0]
    left = np.append(np.cumsum(pairs[order][::-1])[::-1], 0.0)  # pairs past the top h
    cells = float(len(queries)) * len(targets)
    best = min(
        range(0, min(len(order), 2048) + 1, 64),
        key=lambda h: cells * h * _COST_MAC + left[h] * _COST_PAIR,
    )
    return order[:best]


def _ragged(offsets: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For texts `docs` in a CSR layout: each entry's row in `docs` and its flat index."""
    starts = offsets[docs]
    counts = offsets[docs + 1] - starts
    rows = np.repeat(np.arange(len(docs), dtype=np.int64), counts)
    before = np.cumsum(counts) - counts
    idx = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(starts - before, counts)
    return rows, idx


# --- candidate pairs by a set-similarity join -------------------------------------------------

_JOIN_MODE = (
    "auto"  # "auto": the join where it is estimated cheaper than the product; "always"; "never"
)
_JOIN_MIN_PAIRS = (
    1 << 23
)  # fewer (query, target) pairs than this: the product, whatever the estimate
# How a block of the join is counted: "numba" (join_kernel, compiled) where numba imports,
# else "numpy" (every expanded entry sorted); the same pairs either way.
_JOIN_KERNEL = "numba"
# The LCS of a batch of pairs: "numba" (join_kernel.lcs) once numba is loaded, or to load it for a
# batch of at least this many pairs (below, importing numba costs more than it saves); else
# numpy. The same lengths either way.
_LCS_KERNEL = "numba"
_LCS_KERNEL_PAIRS = 1 << 14
_JOIN_FIRST = 3  # prefix positions of each query probed in the first round
_JOIN_BLOCK = 1 << 19  # index entries expanded per block of queries
_JOIN_ELL = 2  # pairs must share this many probed features (the l-prefix lemma)
_JOIN_BANDS = 8  # bands of query lengths probed separately
_CHUNK_BITS = 16
_JOIN_TARGETS = 1 << _CHUNK_BITS  # targets per chunk of the join's index
# Rough CPU seconds per index entry the join expands and per (query, target) cell of the product
# path; they only choose between the two.
_COST_ENTRY = 3e-8
_COST_CELL = 4e-8


def _join_for(corpus: _Corpus, queries: np.ndarray, targets: np.ndarray, t: float) -> _Join | None:
    """The join for these queries and targets, or None where the product path is the better bet
    (few pairs, a low threshold that makes prefixes long) or the only exact one (t outside [0, 1):
    the join never proposes a pair without a shared token)."""
    if _JOIN_MODE == "never" or not 0 <= t < 1 or not len(queries) or not len(targets):
        return None
    cells = len(queries) * len(targets)
    if _JOIN_MODE == "auto" and cells < _JOIN_MIN_PAIRS:
        return None
    join = _Join(corpus, queries, targets, t)
    if _JOIN_MODE == "auto" and join.entries * _COST_ENTRY > cells * _COST_CELL:
        return None
    return join


def _h(lengths: np.ndarray, t: float) -> np.ndarray:
    """t·len/2 rounded down to a multiple of 1/4: `_QuerySide.h`."""
    return np.floor(lengths * (4 * (t / 2))) / 4


def _need(h_a: np.ndarray, h_b: np.ndarray) -> np.ndarray:
    """The least overlap the bound lets through, ``overlap > h(la) + h(lb) - _SLACK``, and at least
    1 (no shared token: LCS 0, F1 0, never above a threshold >= 0)."""
    return np.maximum(np.floor(h_a + h_b - _SLACK) + 1, 1).astype(np.int64)


def _least_need(la: np.ndarray, ha: np.ndarray, lb: np.ndarray, hb: np.ndarray):
    """For each length of `la` against the sorted lengths `lb`: the index in `lb` of the shortest
    length a pair can pass the bound with (its needed overlap at most both lengths), len(lb)
    where none can, and the overlap needed there, the least over all such lengths since the
    need grows with the length."""
    first = np.full(len(la), len(lb), dtype=np.int64)
    least = np.zeros(len(la), dtype=np.int64)
    if not len(lb):
        return first, least
    step = max(1, (1 << 20) // max(len(lb), 1))
    for lo in range(0, len(la), step):
        need = _need(ha[lo : lo + step, None], hb[None, :])
        ok = need <= np.minimum(la[lo : lo + step, None], lb[None, :])
        at = np.argmax(ok, axis=1)
        first[lo : lo + step] = np.where(ok.any(axis=1), at, len(lb))
        least[lo : lo + step] = need[np.arange(len(at)), at]
    return first, least


def _spans(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For spans (start, count) of a flat array: each element's span and its offset in it."""
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    within = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(counts) - counts, counts
    )
    return rows, within


class _Join:
    """The candidate pairs of the overlap bound, found by a set-similarity join instead of the
    all-pairs product: its work grows with the pairs that share a rare enough feature, not with
    all pairs (AllPairs / PPJoin: Bayardo et al. 2007, Xiao et al. 2008).

    A pair passes the bound only with overlap >= a = `_need`(la, lb), and a <= min(lx, ly) (the
    length filter). Features are ordered globally, rarest first (`_Corpus.feat`). The k-th
    feature a query x and a target y share has the a - k others after it in both, so it sits at
    a position i <= lx - a + k - 1 in x and j <= ly - a + k - 1 in y. With l = `_JOIN_ELL`, the
    first min(l, a) shared features therefore all meet

    * i < lx - a_min(lx) + l and j < ly - a_min(ly) + l, a_min the least need over the lengths
      on the other side (the prefix filter: only those positions are probed and indexed),
    * need(lx, ly) <= lx - i + l - 1 (the target lengths a probe scans: one range, the index
      being sorted by feature, then length) and need(lx, ly) <= ly - j + l - 1 (each index
      entry keeps the longest query length it serves, checked once expanded; queries go in
      bands of lengths, each scanning only the entries that serve its shortest length).

    So a pair sharing fewer than min(l, need) such features cannot pass the bound. The others
    are proposed only if a sketch bound (`_Corpus.sketch`) on their overlap still reaches the
    need: every pair the product path would propose is proposed, and few others. Queries are
    probed in two rounds: first their `_JOIN_FIRST` rarest prefix features, any one shared
    proposing a pair (cheap, and it finds most near-duplicates); then, for the queries not yet
    dropped, the whole prefix with the count, leaving out the pairs proposed before. The targets
    are split into chunks of `_JOIN_TARGETS`, each with its own index, so that the random reads
    of a block (index words, sketches) stay within a few megabytes.
    """

    def __init__(self, corpus: _Corpus, queries: np.ndarray, targets: np.ndarray, t: float):
        self.corpus, self.queries, self.targets, self.t = corpus, queries, targets, t
        lengths = corpus.lengths
        self.q4 = np.floor(lengths * (2 * t)).astype(np.int32)  # 4·h(len): _need in integers
        lq, lt = lengths[queries], lengths[targets]
        uq = np.flatnonzero(np.bincount(lq, minlength=1)[1:]) + 1  # distinct lengths > 0
        ut = np.flatnonzero(np.bincount(lt, minlength=1)[1:]) + 1
        hq, ht = _h(uq, t), _h(ut, t)
        q_first, q_least = _least_need(uq, hq, ut, ht)
        t_first, t_least = _least_need(ut, ht, uq, hq)
        more = _JOIN_ELL - 1  # the l-prefix: l - need + _JOIN_ELL features
        # prefix lengths per distinct length (a trailing 0 for the empty texts)
        q_prefix = np.append(
            np.where(q_first < len(ut), np.minimum(uq - q_least + 1 + more, uq), 0), 0
        )
        t_prefix = np.append(
            np.where(t_first < len(uq), np.minimum(ut - t_least + 1 + more, ut), 0), 0
        )
        n_ut, n_t = max(len(ut), 1), len(targets)
        # Pairs must share min(_JOIN_ELL, need) probed features; a query whose least need
        # against any target is below _JOIN_ELL settles for one.
        least_q4 = int(self.q4[targets][lt > 0].min()) if (lt > 0).any() else 0
        self.q_min = np.where((self.q4[queries] + least_q4 + 2) // 4 >= _JOIN_ELL, _JOIN_ELL, 1)

        # The index: every target's prefix features, sorted by (chunk of targets, feature,
        # length), each with its target (within the chunk) and the longest query length (as an
        # index in uq) it may pair with, packed in one word.
        t_len = np.searchsorted(ut, lt)
        rows, j = _spans(t_prefix[np.where(lt > 0, t_len, len(ut))])
        ly = lt[rows]
        longest = np.searchsorted(hq, (ly - j + more) - _h(ly, t) + _SLACK, side="left") - 1
        ok = longest >= 0
        rows, j, longest = rows[ok], j[ok], longest[ok]
        key = corpus.feat[corpus.offsets[targets][rows] + j].astype(np.int64) * n_ut
        key += t_len[rows]
        chunk, local = rows >> _CHUNK_BITS, rows & (_JOIN_TARGETS - 1)
        k_bits, m_bits = int(corpus.n_feat * n_ut).bit_length(), len(uq).bit_length()
        c_bits = int(n_t >> _CHUNK_BITS).bit_length()
        if c_bits + k_bits + _CHUNK_BITS + m_bits <= 63:  # one sort of packed entries
            low = _CHUNK_BITS + m_bits
            packed = (((chunk << k_bits) | key) << low) | (local << m_bits) | longest
            packed.sort()
            key, chunk = (packed >> low) & ((1 << k_bits) - 1), packed >> (low + k_bits)
            local = (packed >> m_bits) & (_JOIN_TARGETS - 1)
            longest = packed & ((1 << m_bits) - 1)
            del packed
        else:
            order = np.lexsort((key, chunk))
            key, chunk, local, longest = key[order], chunk[order], local[order], longest[order]
        n_chunks = (n_t + _JOIN_TARGETS - 1) >> _CHUNK_BITS
        self.chunk_at = np.searchsorted(chunk, np.arange(n_chunks + 1))
        # index word: local target << shift | longest (shift 16 in uint32 when lengths allow)
        self.shift = 16 if len(uq) < 1 << 16 else 32
        self.word = np.uint32 if self.shift == 16 else np.uint64
        self.ikey = key
        self.iw = (local.astype(self.word) << self.word(self.shift)) | longest.astype(self.word)

        # The probes: every query's prefix features, with the index keys bounding their range.
        q_len = np.searchsorted(uq, lq)
        rows, i = _spans(q_prefix[np.where(lq > 0, q_len, len(uq))])
        lx, lxi = lq[rows], q_len[rows]
        f = corpus.feat[corpus.offsets[queries][rows] + i].astype(np.int64) * n_ut
        top = np.searchsorted(ht, (lx - i + more) - _h(lx, t) + _SLACK, side="left") - 1
        reach = top >= q_first[lxi]
        rows, i, lxi, f, top = rows[reach], i[reach], lxi[reach], f[reach], top[reach]
        self.e_q, self.e_lxi = rows, lxi.astype(self.word)
        self.e_from, self.e_to = f + q_first[lxi], f + top  # index keys in [from, to]
        self.from_order = np.argsort(self.e_from, kind="stable")  # sorted needles search fast
        self.to_order = np.argsort(self.e_to, kind="stable")
        # Round 0: the rarest features, any shared one proposes; round 1: the whole l-prefix.
        self.rounds = [i < _JOIN_FIRST, np.ones(len(i), dtype=bool)]
        # Bands of query lengths (as indices in uq), about even in probes: each expands only
        # the index entries serving its shortest length.
        cuts = np.quantile(lxi, np.linspace(0, 1, _JOIN_BANDS + 1)[1:-1]) if len(lxi) else []
        self.bands = np.unique(np.concatenate([[0], np.ceil(cuts), [len(uq) + 1]]).astype(int))
        band = np.searchsorted(self.bands, self.e_lxi, side="right") - 1
        self.band_probes = [
            [
                (int(self.bands[b]), (order[sel[order]], back[sel[back]]))
                for b in range(len(self.bands) - 1)
                for sel in [in_round & (band == b)]
                if sel.any()
            ]
            for in_round in self.rounds
            for order, back in [(self.from_order, self.to_order)]
        ]
        nobody = np.zeros(len(queries), dtype=bool)
        self.entries = sum(
            int(self._ranges(keys, probes, nobody)[1].sum())
            for _, keys, _, probes in self._slices(1, nobody)
        )
        self._proposed: list[list[np.ndarray]] = [[] for _ in range(n_chunks)]
        # Blocks counted by the compiled kernel where numba imports (decided once per join: the
        # chunks' sketch layout depends on it), else by numpy.
        self.compiled = _JOIN_KERNEL == "numba" and join_kernel.ready()
        self.expanded = self.sketched = 0

    def _ranges(
        self, keys: np.ndarray, probes: tuple[np.ndarray, np.ndarray], done: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Start and count, in the index `keys`, of the entries each probe may pair with: the
        probes given in two orders (by their first key and by their last, so that the sorted
        needles search fast), those of queries marked in `done` left out (count 0)."""
        lo = np.zeros(len(self.e_q), dtype=np.int64)
        hi = np.zeros(len(self.e_q), dtype=np.int64)
        by_from, by_to = probes
        by_from = by_from[~done[self.e_q[by_from]]]
        by_to = by_to[~done[self.e_q[by_to]]]
        lo[by_from] = np.searchsorted(keys, self.e_from[by_from], side="left")
        hi[by_to] = np.searchsorted(keys, self.e_to[by_to], side="right")
        return lo, np.maximum(hi - lo, 0)

    def _slices(self, round_no: int, done: np.ndarray) -> Iterator[tuple]:
        """The round's work, a slice at a time: (chunk c, index entries of the slice: keys and
        words, its probes) for each chunk of targets and each band of query lengths, the index
        restricted to the entries that serve the band's shortest length."""
        mask = self.word((1 << self.shift) - 1)
        for c in range(len(self.chunk_at) - 1):
            at = slice(self.chunk_at[c], self.chunk_at[c + 1])
            keys, words = self.ikey[at], self.iw[at]
            longest = words & mask
            for shortest, probes in self.band_probes[round_no]:
                serves = longest >= shortest
                yield c, keys[serves], words[serves], probes

    def survivors(
        self, round_no: int, done: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (query index, target text, overlap bound) for the pairs of a round, block by
        block; queries marked in `done` (by the consumer, between blocks) are left out."""
        sketch, light = self.corpus.sketch()  # here, not in the worker threads
        compiled = self.compiled
        if compiled:  # the kernel reads a text's words side by side
            sketch = self.corpus.sketch_rows()
        count_block = self._block_compiled if compiled else self._block
        in_flight: deque[Future] = deque()
        seen, chunk, chunk_no = None, (), -1
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            for c, keys, words, probes in self._slices(round_no, done):
                yield from self._drain(in_flight, done, round_no, 2 * _WORKERS)
                lo, count = self._ranges(keys, probes, done)
                ent = np.flatnonzero(count)
                if not len(ent):
                    continue
                if c != chunk_no:
                    chunk_no, base = c, c << _CHUNK_BITS
                    targets = self.targets[base : base + _JOIN_TARGETS]
                    t_sketch = sketch[targets] if compiled else sketch[:, targets]
                    chunk = (t_sketch, light[targets], self.q4[targets])
                    if round_no:
                        old = np.concatenate(self._proposed[c] or [np.zeros(0, dtype=np.int64)])
                        seen = np.sort(old[~done[old >> _CHUNK_BITS]])
                # Blocks of whole queries: at most _JOIN_BLOCK entries (unless one query has
                # more) and 2**16 queries (pairs keyed in uint32).
                q = self.e_q[ent]
                new_q = np.concatenate([[True], q[1:] != q[:-1]])
                rank = np.cumsum(new_q) - 1
                starts = np.flatnonzero(new_q)
                per_query = np.add.reduceat(count[ent], starts)
                rows = 1 << 16 if self.shift == 16 else 1 << 40
                block = (np.cumsum(per_query) - per_query) // _JOIN_BLOCK
                block += np.arange(len(starts)) // rows << 40
                cuts = starts[np.flatnonzero(np.concatenate([[True], block[1:] != block[:-1]]))]
                bounds = np.append(cuts, len(ent)).tolist()
                for a, b in pairwise(bounds):
                    part = ent[a:b]
                    row = rank[a:b] - rank[a]
                    args = (c, part, lo[part], count[part], row, (*chunk, words), round_no, seen)
                    in_flight.append(pool.submit(count_block, *args))
                    yield from self._drain(in_flight, done, round_no, _WORKERS)
            yield from self._drain(in_flight, done, round_no, 0)

    def _drain(
        self, in_flight: deque[Future], done: np.ndarray, round_no: int, keep: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        while len(in_flight) > keep:
            c, q_pos, t_local, bound, expanded, sketched = in_flight.popleft().result()
            self.expanded += expanded
            self.sketched += sketched
            if not round_no:
                self._proposed[c].append(q_pos << _CHUNK_BITS | t_local)
            fresh = ~done[q_pos]
            if fresh.any():
                t_pos = (c << _CHUNK_BITS) + t_local[fresh]
                yield q_pos[fresh], self.targets[t_pos], bound[fresh]

    def _block(
        self,
        c: int,
        ent: np.ndarray,
        lo: np.ndarray,
        count: np.ndarray,
        row: np.ndarray,
        chunk: tuple[np.ndarray, ...],
        round_no: int,
        seen: np.ndarray | None,
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, int, int]:
        """The pairs proposed by the probes `ent` (whole queries, `row` the rank of each one's
        query in the block) in chunk c: (c, query index, target index within the chunk,
        overlap bound, entries expanded, pairs sketched)."""
        t_sketch, t_light, t_q4, iw = chunk  # iw: the slice's index words
        word, shift = self.word, self.word(self.shift)
        # src: the index entries [lo, lo + count) of every probe, end to end
        step = np.ones(int(count.sum()), dtype=np.int32 if len(iw) < 1 << 31 else np.int64)
        ends = np.cumsum(count)
        step[0] = lo[0]
        step[ends[:-1]] = lo[1:] - lo[:-1] - count[:-1] + 1
        entry = iw[np.cumsum(step, out=step)]
        probe = np.repeat((row.astype(word) << shift) | self.e_lxi[ent], count)
        mask = word((1 << self.shift) - 1)
        ok = (probe & mask) <= (entry & mask)  # the entry serves the probe's query length
        # pair = query row << 16 | target in the chunk
        cell = (((probe >> shift) << word(_CHUNK_BITS)) | (entry >> shift))[ok]
        cell.sort()
        if not len(cell):
            empty = np.zeros(0, dtype=np.int64)
            return c, empty, empty, empty, len(step), 0
        run = np.flatnonzero(np.concatenate([[True], cell[1:] != cell[:-1], [True]]))
        cells = cell[run[:-1]].astype(np.int64)
        q = self._row_queries(ent, row)
        if round_no:  # probed features the pair shares, at least min(_JOIN_ELL, need)
            cells = cells[np.diff(run) >= self.q_min[q[cells >> _CHUNK_BITS]]]
        q_pos, t_local = q[cells >> _CHUNK_BITS], cells & (_JOIN_TARGETS - 1)
        bound = self._bound(self.queries[q_pos], t_local, t_sketch, t_light, t_q4)
        ok = bound >= 0
        q_pos, t_local, bound = q_pos[ok], t_local[ok], bound[ok]
        q_pos, t_local, bound = _unseen(seen, q_pos, t_local, bound)
        return c, q_pos, t_local, bound, len(step), len(cells)

    def _block_compiled(
        self,
        c: int,
        ent: np.ndarray,
        lo: np.ndarray,
        count: np.ndarray,
        row: np.ndarray,
        chunk: tuple[np.ndarray, ...],
        round_no: int,
        seen: np.ndarray | None,
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, int, int]:
        """`_block` by the compiled kernel (`join_kernel.block`): the same pairs with the same
        bounds, counted per target instead of sorted (so within a query in the order its
        targets were first reached, not by target). The chunk's sketch is by text
        (`_Corpus.sketch_rows`)."""
        t_sketch, t_light, t_q4, iw = chunk
        light, sketch = self.corpus.sketch()[1], self.corpus.sketch_rows()
        q = self._row_queries(ent, row)
        q_min = self.q_min[q] if round_no else np.ones(len(q), dtype=self.q_min.dtype)
        rows, t_local, bound, expanded, sketched = join_kernel.block(
            lo, count, row, self.e_lxi[ent], iw, self.shift, q_min, self.queries[q],
            self.q4, t_q4, sketch, t_sketch, light, t_light,
            _HEAVY_WORDS, (_HEAVY_WORDS + _SKETCH_WORDS) // 2, _JOIN_TARGETS,
        )  # fmt: skip
        q_pos, t_local, bound = _unseen(seen, q[rows], t_local, bound)
        return c, q_pos, t_local, bound, int(expanded), int(sketched)

    def _row_queries(self, ent: np.ndarray, row: np.ndarray) -> np.ndarray:
        """The query index of each row of a block (its probes `ent`, grouped by `row`)."""
        return self.e_q[ent][np.concatenate([[True], row[1:] != row[:-1]])]

    def _bound(
        self,
        a: np.ndarray,
        b: np.ndarray,
        b_sketch: np.ndarray,
        b_light: np.ndarray,
        b_q4: np.ndarray,
    ) -> np.ndarray:
        """An upper bound on the overlap of each pair (query text a, chunk target b) from their
        sketches, or -1 where it is below the need (the pair cannot pass the bound). Half the
        words first, the rest only for the pairs still in."""
        sketch, light = self.corpus.sketch()
        need = np.maximum((self.q4[a] + b_q4[b] + 2) // 4, 1)  # _need, in integers
        heavy = np.zeros(len(a), dtype=np.int32)
        for w in range(_HEAVY_WORDS):
            heavy += np.bitwise_count(sketch[w][a] & b_sketch[w][b])
        light_sum = light[a] + b_light[b]
        odd = np.zeros(len(a), dtype=np.int32)
        half = (_HEAVY_WORDS + _SKETCH_WORDS) // 2
        for w in range(_HEAVY_WORDS, half):
            odd += np.bitwise_count(sketch[w][a] ^ b_sketch[w][b])
        live = np.flatnonzero(heavy + (light_sum - odd) // 2 >= need)
        a, b, odd = a[live], b[live], odd[live]
        for w in range(half, _SKETCH_WORDS):
            odd += np.bitwise_count(sketch[w][a] ^ b_sketch[w][b])
        out = np.full(len(need), -1, dtype=np.int64)
        final = heavy[live] + (light_sum[live] - odd) // 2
        out[live] = np.where(final >= need[live], final, -1)
        return out


def _unseen(
    seen: np.ndarray | None, q_pos: np.ndarray, t_local: np.ndarray, bound: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs not among `seen` (sorted keys q_pos << _CHUNK_BITS | t_local: those the join's
    first round proposed already)."""
    if seen is not None and len(seen) and len(q_pos):
        key = q_pos << _CHUNK_BITS | t_local
        new = seen[np.minimum(np.searchsorted(seen, key), len(seen) - 1)] != key
        q_pos, t_local, bound = q_pos[new], t_local[new], bound[new]
    return q_pos, t_local, bound


def _verify_first_hit(
    corpus: _Corpus,
    queries: np.ndarray,
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    t: float,
    hit: np.ndarray,
    st: NoveltyStats,
) -> None:
    """Exact F1 of the pending (query index, target, overlap) pairs, in rounds, highest overlap
    first, until each query has a hit or has no pair left."""
    qp = np.concatenate([p[0] for p in pending])
    td = np.concatenate([p[1] for p in pending])
    ov = np.concatenate([p[2] for p in pending])
    live = ~hit[qp]
    qp, td, ov = qp[live], td[live], ov[live]
    order = np.lexsort((-ov, qp))
    qp, td = qp[order], td[order]
    new_query = np.ones(len(qp), dtype=bool)
    new_query[1:] = qp[1:] != qp[:-1]
    starts = np.flatnonzero(new_query)
    rank = np.arange(len(qp)) - np.repeat(starts, np.diff(np.append(starts, len(qp))))
    for lo, hi in ((0, 1), (1, 4), (4, 16), (16, 64), (64, len(qp) + 1)):
        sel = (rank >= lo) & (rank < hi) & ~hit[qp]
        if sel.any():
            f = _f1_pairs(corpus, queries[qp[sel]], td[sel])
            st.aligned += int(sel.sum())
            hit[qp[sel][f > t]] = True


def _resolve_in_order(corpus: _Corpus, chunk: np.ndarray, t: float, st: NoveltyStats) -> np.ndarray:
    """Keep flags for the texts `chunk` (in order) compared only among themselves: a text is
    dropped when its F1 with an earlier kept one is > t."""
    keep = np.ones(len(chunk), dtype=bool)
    later, earlier = [], []
    for q_pos, t_docs, _ in _all_survivors(corpus, chunk, chunk, t):
        before = t_docs < chunk[q_pos]
        later.append(q_pos[before])
        earlier.append(np.searchsorted(chunk, t_docs[before]))  # chunk is sorted
    if not later:
        return keep
    qp, tp = np.concatenate(later), np.concatenate(earlier)
    st.bound_survivors += len(qp)
    st.aligned += len(qp)
    f = _f1_pairs(corpus, chunk[qp], chunk[tp])
    qp, tp = qp[f > t], tp[f > t]
    order = np.lexsort((tp, qp))
    too_close: dict[int, list[int]] = {}
    for i, j in zip(qp[order].tolist(), tp[order].tolist(), strict=True):
        too_close.setdefault(i, []).append(j)
    for i in sorted(too_close):  # every j < i is settled when i is reached
        keep[i] = not any(keep[j] for j in too_close[i])
    return keep


def _f1_pairs(corpus: _Corpus, targets: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """rouge_score's F1 for pairs (target = the candidate, prediction = the compared text),
    float64 with the same operations in the same order."""
    lt = corpus.lengths[targets]
    lp = corpus.lengths[predictions]
    lcs = _lcs_pairs(corpus, targets, predictions).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = lcs / lp
        recall = lcs / lt
        f = 2 * precision * recall / (precision + recall)
    ok = (lt > 0) & (lp > 0) & (precision + recall > 0)
    return np.where(ok, f, 0.0)


def _lcs_pairs(corpus: _Corpus, a_docs: np.ndarray, b_docs: np.ndarray) -> np.ndarray:
    """LCS lengths of text pairs: bit-parallel (Hyyrö) over the tokens of a — compiled pair by
    pair (`join_kernel.lcs`) where numba imports, for any batch once the kernels are loaded and
    for batches of at least `_LCS_KERNEL_PAIRS` before; else vectorised over pairs in numpy,
    one step per token of b."""
    big = len(a_docs) >= _LCS_KERNEL_PAIRS or join_kernel.loaded()
    if _LCS_KERNEL == "numba" and big and join_kernel.ready():
        return _lcs_compiled(corpus, a_docs, b_docs)
    out = np.zeros(len(a_docs), dtype=np.int64)
    la = corpus.lengths[a_docs]
    lb = corpus.lengths[b_docs]
    words = np.maximum((la + _WORD - 1) // _WORD, 1)
    order = np.lexsort((a_docs, words))
    valid = (la[order] > 0) & (lb[order] > 0)
    order = order[valid]
    start = 0
    while start < len(order):
        # A chunk: one word count, at most _CHUNK_PAIRS pairs, and few enough distinct a-texts
        # (at most _CHUNK_TEXTS) for a match-mask table of at most _TABLE_CELLS words.
        end = min(start + _CHUNK_PAIRS, len(order))
        w = int(words[order[start]])
        same_w = words[order[start:end]] == w
        end = start + (int(np.argmin(same_w)) if not same_w.all() else end - start)
        a_chunk = a_docs[order[start:end]]
        new_text = np.ones(end - start, dtype=bool)
        new_text[1:] = a_chunk[1:] != a_chunk[:-1]
        text_no = np.cumsum(new_text)
        table = np.cumsum(corpus.lengths[a_chunk[new_text]]) * np.arange(1, text_no[-1] + 1) * w
        limit = min(_CHUNK_TEXTS, max(1, int(np.searchsorted(table, _TABLE_CELLS, "right"))))
        if text_no[-1] > limit:
            end = start + int(np.searchsorted(text_no, limit, side="right"))
        idx = order[start:end]
        out[idx] = _lcs_chunk(corpus, a_docs[idx], b_docs[idx], w)
        start = end
    return out


def _lcs_compiled(corpus: _Corpus, a_docs: np.ndarray, b_docs: np.ndarray) -> np.ndarray:
    """`_lcs_pairs` by the compiled kernel (`join_kernel.lcs`): pairs in groups of one
    bit-vector width, grouped by a-text within, each group with a match-mask table over its own
    a-texts' tokens (slots x words), so a long text widens only its own group's table."""
    out = np.empty(len(a_docs), dtype=np.int64)
    if not len(a_docs):
        return out
    words = (corpus.lengths[a_docs] + _WORD - 1) // _WORD
    order = np.lexsort((a_docs, words))
    slot_of = np.zeros(corpus.n_vocab, dtype=np.int64)  # token -> its row of masks (0: none)
    for group in np.split(order, np.flatnonzero(np.diff(words[order])) + 1):
        a = a_docs[group]
        _, idx = _ragged(corpus.offsets, np.unique(a))
        own = np.unique(corpus.tokens[idx])
        slot_of[own] = np.arange(1, len(own) + 1)
        masks = np.zeros((len(own) + 1, max(1, int(words[group[0]]))), dtype=np.uint64)
        b = b_docs[group]
        out[group] = join_kernel.lcs(corpus.tokens, slot_of, corpus.offsets, a, b, masks)
        slot_of[own] = 0
    return out


def _lcs_chunk(corpus: _Corpus, a_docs: np.ndarray, b_docs: np.ndarray, n_words: int) -> np.ndarray:
    """LCS lengths for pairs whose a-texts all fit in `n_words` 64-bit words.

    Hyyrö's recurrence on the bit vector V of a (a 0 bit = a position matched in the LCS):
    ``U = V & M[b_k]; V = (V + U) | (V - U)``, with ``V - U == V ^ U`` since U is a subset of V.
    Bits above len(a) start at 1 and stay 1, so the LCS is the number of 0 bits.
    """
    tokens, offsets, lengths = corpus.tokens, corpus.offsets, corpus.lengths
    if len(a_docs) < 24 * n_words:  # too few pairs to pay numpy's per-step overhead
        text = {d: tokens[offsets[d] : offsets[d + 1]].tolist() for d in {*a_docs, *b_docs}}
        pairs = zip(a_docs.tolist(), b_docs.tolist(), strict=True)
        return np.array([_lcs_python(text[a], text[b]) for a, b in pairs], dtype=np.int64)
    texts, a_local = np.unique(a_docs, return_inverse=True)
    # Match masks: table[token slot, a-text, word] = bits of the positions of that token in a.
    rows, idx = _ragged(offsets, texts)
    a_tok = tokens[idx]
    vocab, slot = np.unique(a_tok, return_inverse=True)
    table = np.zeros((len(vocab) + 1, len(texts), n_words), dtype=np.uint64)
    pos = idx - offsets[texts][rows]
    np.bitwise_or.at(
        table,
        (slot + 1, rows, pos // _WORD),
        np.left_shift(np.uint64(1), (pos % _WORD).astype(np.uint64)),
    )
    # Pairs by decreasing length of b, so the pairs still running are always a prefix.
    lb = lengths[b_docs]
    by_len = np.argsort(-lb, kind="stable")
    a_local, b_start, lb = a_local[by_len], offsets[b_docs][by_len], lb[by_len]
    active = np.searchsorted(-lb, -np.arange(int(lb[0])), side="left")  # pairs with lb > k

    v = np.full((len(a_docs), n_words), np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    # Token -> slot in this chunk's vocabulary (0: in no a-text of the chunk).
    slot_of = np.zeros(corpus.n_vocab, dtype=np.int64)
    slot_of[vocab] = np.arange(1, len(vocab) + 1)
    for k in range(int(lb[0])):
        n = int(active[k])
        m = table[slot_of[tokens[b_start[:n] + k]], a_local[:n]]
        vn = v[:n]
        u = vn & m
        x = vn ^ u  # V & ~M
        if n_words == 1:
            vn += u
        else:
            carry = np.zeros(n, dtype=np.uint64)
            for j in range(n_words):
                old = vn[:, j].copy()
                vn[:, j] += u[:, j]
                c1 = vn[:, j] < old
                vn[:, j] += carry
                carry = (c1 | ((vn[:, j] == 0) & (carry == 1))).astype(np.uint64)
        vn |= x
    lcs = n_words * _WORD - np.bitwise_count(v).sum(axis=1).astype(np.int64)
    out = np.empty(len(a_docs), dtype=np.int64)
    out[by_len] = lcs
    return out
