"""The novelty join's inner loop, compiled (numba): expand a block's index entries, count the
probed features each (query, target) pair shares, and bound the overlap of the pairs that share
enough of them from their sketches. And the LCS of many text pairs (`lcs`), for the alignments.

It computes what `novelty._Join._block`'s numpy path computes — the same pairs with the same
bounds, and the same counts of entries expanded and pairs sketched — but counts the probed
features a pair shares in a per-target counter array instead of sorting every expanded entry,
reads a pair's sketch words side by side (`_Corpus.sketch_rows`), and stops at the first half of
them where the bound already falls below the need. Within a query, pairs come in the order their
targets were first reached, not sorted by target (nothing downstream depends on that order).
Two threads run it at once (`nogil`). Compiled on first use (a few seconds) and cached next to
this file, or in the user's cache folder where that one is not writable.

`lcs` runs Hyyrö's bit-parallel recurrence that `novelty._lcs_chunk` vectorises in numpy, pair
by pair: the match masks of a text's tokens are set once, in the rows of a small table its
caller maps the tokens to, for all of its pairs (pairs grouped by that text), so a step is one
load and a few word operations instead of numpy's passes over thousands of pairs. Same LCS
lengths.

`ready()` imports numba and says whether the kernels can run; where they cannot (numba missing
or not importable), the join counts its blocks in numpy and the LCS stays numpy's.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from typing import Any

import numpy as np


def available() -> bool:
    """Whether numba can be imported (without importing it: the join alone needs it, and only
    for inputs large enough to take the join)."""
    return importlib.util.find_spec("numba") is not None


_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


def _popcount(x):  # x: uint64
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return np.int64((x * _H01) >> np.uint64(56))


def _block(
    lo, count, row, lxi, iw, shift, qmin_row, a_row,
    q4, t_q4, sketch, t_sketch, light, t_light, n_heavy, half, n_targets,
):  # fmt: skip
    """The pairs of one block: probes p (sorted by their query's row in the block) expand the
    index words iw[lo[p] : lo[p] + count[p]]; an entry serves the probe when the probe's query
    length index lxi[p] <= its longest (the word's low `shift` bits); its target is the high
    bits. A (row, target) pair sharing at least qmin_row[row] served probes gets its sketch
    bound (query text a_row[row], target t within the chunk; `sketch` and `t_sketch` a text's
    words per row); kept where it reaches the need. Returns (rows, targets, bounds, entries
    expanded, pairs sketched)."""
    n_probe = lo.shape[0]
    total = 0
    for p in range(n_probe):
        total += count[p]
    out_row = np.empty(total, np.int64)
    out_t = np.empty(total, np.int64)
    out_b = np.empty(total, np.int64)
    counter = np.zeros(n_targets, np.int32)
    touched = np.empty(n_targets, np.int64)
    mask = (np.int64(1) << shift) - 1
    n_words = sketch.shape[1]
    n_out = 0
    sketched = 0
    p = 0
    while p < n_probe:
        r = row[p]
        n_touched = 0
        while p < n_probe and row[p] == r:
            lx = np.int64(lxi[p])
            for e in range(lo[p], lo[p] + count[p]):
                entry = np.int64(iw[e])
                if lx <= (entry & mask):
                    t = entry >> shift
                    if counter[t] == 0:
                        touched[n_touched] = t
                        n_touched += 1
                    counter[t] += 1
            p += 1
        a = a_row[r]
        q_min = qmin_row[r]
        qa = np.int64(q4[a])
        la = np.int64(light[a])
        for k in range(n_touched):
            t = touched[k]
            shared = counter[t]
            counter[t] = 0
            if shared < q_min:
                continue
            sketched += 1
            need = max((qa + np.int64(t_q4[t]) + 2) // 4, 1)
            heavy = np.int64(0)
            for w in range(n_heavy):
                heavy += _popcount(sketch[a, w] & t_sketch[t, w])
            light_sum = la + np.int64(t_light[t])
            odd = np.int64(0)
            for w in range(n_heavy, half):
                odd += _popcount(sketch[a, w] ^ t_sketch[t, w])
            if heavy + (light_sum - odd) // 2 < need:
                continue
            for w in range(half, n_words):
                odd += _popcount(sketch[a, w] ^ t_sketch[t, w])
            bound = heavy + (light_sum - odd) // 2
            if bound < need:
                continue
            out_row[n_out] = r
            out_t[n_out] = t
            out_b[n_out] = bound
            n_out += 1
    return out_row[:n_out], out_t[:n_out], out_b[:n_out], total, sketched


def _lcs(tokens, slot_of, offsets, a_docs, b_docs, masks, out):  # pairs grouped by a_docs
    """out[i] = LCS length of texts a_docs[i] and b_docs[i] (token ids in CSR `tokens` /
    `offsets`); `slot_of` maps a token id to its row of `masks` (0: in no a-text, an all-zero
    row), a zeroed (slots + 1, words) uint64 scratch table, left zeroed."""
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    n_words = masks.shape[1]
    v = np.empty(n_words, dtype=np.uint64)
    i, n = 0, len(a_docs)
    while i < n:
        a = a_docs[i]
        a0, a1 = offsets[a], offsets[a + 1]
        la = a1 - a0
        w = (la + 63) // 64
        for p in range(a0, a1):  # this text's match masks
            k = p - a0
            masks[slot_of[tokens[p]], k // 64] |= np.uint64(1) << np.uint64(k % 64)
        j = i
        while j < n and a_docs[j] == a:
            b = b_docs[j]
            if la == 0 or offsets[b + 1] == offsets[b]:
                out[j] = 0
                j += 1
                continue
            for x in range(w):
                v[x] = ones
            for p in range(offsets[b], offsets[b + 1]):
                row = slot_of[tokens[p]]
                carry = np.uint64(0)
                for x in range(w):
                    vx = v[x]
                    u = vx & masks[row, x]
                    s = vx + u
                    c1 = s < vx
                    s2 = s + carry
                    c2 = s2 < s
                    carry = np.uint64(1) if (c1 or c2) else np.uint64(0)
                    v[x] = s2 | (vx ^ u)
            zeros = 0
            for x in range(w):
                zeros += 64 - _popcount(v[x])
            out[j] = zeros
            j += 1
        for p in range(a0, a1):
            masks[slot_of[tokens[p]], (p - a0) // 64] = np.uint64(0)
        i = j


_compiled: Callable[..., Any] | None = None
_lcs_compiled: Callable[..., Any] | None = None
_lock = threading.Lock()


def loaded() -> bool:
    """Whether `ready()` has prepared the kernels in this process (numba is imported)."""
    return _compiled is not None


def ready() -> bool:
    """Import numba and prepare the kernels (each compiled at its first call); False where numba
    is missing or does not import (e.g. built for another numpy): the join then counts in numpy
    and the LCS stays numpy's."""
    global _compiled, _lcs_compiled, _popcount
    if _compiled is None:
        with _lock:
            if _compiled is None:
                try:
                    import numba
                except ImportError:
                    return False
                try:
                    pop = numba.njit(inline="always", cache=True)(_popcount)
                    kernel = numba.njit(nogil=True, cache=True)(_block)
                    lcs_kernel = numba.njit(nogil=True, cache=True)(_lcs)
                except RuntimeError:  # no writable cache folder: compile in each process
                    pop = numba.njit(inline="always")(_popcount)
                    kernel = numba.njit(nogil=True)(_block)
                    lcs_kernel = numba.njit(nogil=True)(_lcs)
                # `_compiled` last: `loaded()` and `ready()` read it without the lock
                _popcount, _lcs_compiled, _compiled = pop, lcs_kernel, kernel
    return True


def block(*args: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """`_block`, compiled by numba on the first call (loaded from numba's cache after the
    first process); `ready()` first."""
    assert _compiled is not None, "join_kernel.ready() was not called"
    return _compiled(*args)


def lcs(
    tokens: np.ndarray,
    slot_of: np.ndarray,
    offsets: np.ndarray,
    a_docs: np.ndarray,
    b_docs: np.ndarray,
    masks: np.ndarray,
) -> np.ndarray:
    """`_lcs`, compiled: the LCS lengths of the pairs (a_docs[i], b_docs[i]), pairs grouped by
    a_docs; `ready()` first."""
    assert _lcs_compiled is not None, "join_kernel.ready() was not called"
    out = np.empty(len(a_docs), dtype=np.int64)
    _lcs_compiled(tokens, slot_of, offsets, a_docs, b_docs, masks, out)
    return out
