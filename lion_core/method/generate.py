"""Generation: new instructions written by the generator from hard and easy seeds.

Hard seeds (the student still lags the teacher) ask for a new instruction of the same domain and
task type; easy seeds ask for one of the same domain but rarer (prompts.HARD_PROMPT /
EASY_PROMPT). Each kind is asked for `oversample` times the instructions it needs; every answer
goes through the paper's post-filters, and the survivors of both kinds through the exact-duplicate
and ROUGE-L novelty filters, until each kind has what it needs.

Every candidate keeps a status, so the round can say where its instructions went:

    failed       the request failed (after the client's retries)
    truncated    cut off at max_tokens (finish_reason "length")
    empty        nothing left after cleaning
    echo         repeats the prompt's markers ("#Given Instruction#", "created instruction", ...)
    too_short    fewer than generator.min_words words
    punctuation  starts with punctuation
    non_ascii    starts with a non-ASCII character (generator.drop_non_ascii_start)
    candidate    passed the post-filters (before select_novel)
    contaminated close to an evaluation question (lion_core.method.decontaminate; checked
                 before select_novel, which leaves it alone)
    duplicate    exactly an instruction of the train pool or of an earlier candidate
    not_novel    ROUGE-L F1 above the threshold with the pool or an earlier kept candidate
    surplus      novel, but its kind already had enough
    capped       its seed's category already had generator.max_category_share of the round
                 (judged only if the round is still short after every pass)
    kept         added to the pool

Two knobs go beyond one pass of the paper's prompts (both off by default, on in the demo):
`generator.max_attempts` asks again for what a kind is still short of, as the paper's generator
loops until it has its instructions (`top_up_plan`); `generator.max_category_share` spreads the
requests over the seeds' categories in proportion to their numbers, capped at that share of the
round (`allocate`), and holds kept instructions of a full category back (`select_novel`).

The original code also dropped any candidate containing the word "instruction"; that throws away
every legitimate "write instructions for ..." task, so we drop only echoes of the prompt's own
markers (see docs/referee-and-generation.md).

Everything is deterministic: the same hard/easy sets, seed and answers give the same rows in the
same order, which the resume test relies on.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd

from lion_core.config import GeneratorConfig, PoolsConfig
from lion_core.errors import LLMError
from lion_core.llm.types import ChatRequest, ChatResult, Completer
from lion_core.method.novelty import filter_novel
from lion_core.method.prompts import generator_messages, instruction_text
from lion_core.run.schemas import GENERATED_SCHEMA, POOL_SCHEMA, instruction_id

Kind = Literal["hard", "easy"]
KINDS: tuple[Kind, Kind] = ("hard", "easy")

# ------------------------------------------------------------------------------------------
# Seeds
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedPlan:
    """The seeds of each kind (a seeded shuffle of the set, or with a category cap the walk of
    requests over it) and how many new instructions each kind must yield. Unpacks as
    (hard_seeds, easy_seeds). `categories`: each seed's category (instruction_id -> name)."""

    hard: pd.DataFrame
    easy: pd.DataFrame
    n_hard: int
    n_easy: int
    categories: dict[str, str] | None = None

    def seeds(self, kind: Kind) -> pd.DataFrame:
        return self.hard if _kind(kind) == "hard" else self.easy

    def wanted(self, kind: Kind) -> int:
        return self.n_hard if _kind(kind) == "hard" else self.n_easy

    def __iter__(self) -> Iterator[pd.DataFrame]:
        return iter((self.hard, self.easy))


def wanted_counts(n_hard_set: int, n_easy_set: int, pools: PoolsConfig) -> tuple[int, int]:
    """New instructions wanted per kind: hard_share of new_per_round from hard seeds, the rest
    from easy ones; all from the other kind when one set is empty, none when both are."""
    total = pools.new_per_round
    if not n_hard_set and not n_easy_set:
        return 0, 0
    if not n_hard_set:
        return 0, total
    if not n_easy_set:
        return total, 0
    n_hard = math.floor(pools.hard_share * total + 0.5)
    return n_hard, total - n_hard


def plan_seeds(
    hard: pd.DataFrame,
    easy: pd.DataFrame,
    pools: PoolsConfig,
    seed: int,
    generator: GeneratorConfig | None = None,
    categories: dict[str, str] | None = None,
) -> SeedPlan:
    """Shuffle each set with a generator seeded by `seed` (after sorting by instruction_id, so
    the input's row order does not matter); generation walks the shuffle, wrapping around when
    it needs more requests than there are seeds, so every seed is used as evenly as possible.

    With `generator.max_category_share` below 1 and the seeds' `categories`, each kind's frame
    is instead the walk itself, one row per request: the requests of both kinds spread over the
    categories in proportion to their seeds, no category above the share of all requests
    unless the seeds leave no other way (`allocate`), categories taking turns."""
    n_hard, n_easy = wanted_counts(len(hard), len(easy), pools)
    rng = np.random.default_rng([seed, 0x110D])  # one stream for both kinds, fixed order
    shuffled = []
    for frame, n in ((hard, n_hard), (easy, n_easy)):
        frame = frame.drop_duplicates("instruction_id").sort_values("instruction_id", kind="stable")
        order = rng.permutation(len(frame))
        shuffled.append(frame.iloc[order].reset_index(drop=True) if n else frame.iloc[:0])
    plan = SeedPlan(shuffled[0], shuffled[1], n_hard, n_easy, categories)
    if generator is None or generator.max_category_share >= 1 or categories is None:
        return plan
    counts = {k: n_requests(plan.wanted(k), generator.oversample) for k in KINDS}
    walks = category_walks(plan, counts, generator.max_category_share, {})
    return SeedPlan(walks["hard"], walks["easy"], n_hard, n_easy, categories)


def allocate(weights: dict[str, int], total: int, capacity: dict[str, float]) -> dict[str, int]:
    """`total` requests over categories in proportion to `weights`, none above its `capacity`
    (water-filling: a category at its cap gives its excess to the others in proportion); when
    the capacities cannot hold `total`, the rest goes in proportion to the weights after all.
    Integer counts by largest remainder, ties by name: deterministic."""
    cats = sorted(c for c, w in weights.items() if w > 0)
    if total <= 0 or not cats:
        return {}
    share: dict[str, float] = {}
    active, left = list(cats), float(total)
    while active:
        mass = sum(weights[c] for c in active)
        over = [c for c in active if left * weights[c] / mass > capacity.get(c, math.inf)]
        if not over:
            share.update({c: left * weights[c] / mass for c in active})
            break
        for c in over:
            share[c] = max(0.0, capacity[c])
            left -= share[c]
        active = [c for c in active if c not in over]
    rest = total - sum(share.values())
    if rest > 1e-9:  # too few categories for the cap: the seeds demand more of some
        mass = sum(weights[c] for c in cats)
        share = {c: share.get(c, 0.0) + rest * weights[c] / mass for c in cats}
    counts = {c: math.floor(share[c] + 1e-9) for c in cats}
    short = total - sum(counts.values())
    by_remainder = sorted(cats, key=lambda c: (-(share[c] - counts[c]), c))
    for c in by_remainder[:short]:
        counts[c] += 1
    return {c: n for c, n in counts.items() if n}


def category_walks(
    plan: SeedPlan, counts: dict[str, int], max_share: float, used: dict[str, float]
) -> dict[str, pd.DataFrame]:
    """Per kind, `counts[kind]` seed rows (one per request): the categories' allocations
    (`allocate`; capacity = max_share of all requests − `used` so far, hard first), each
    category's seeds cycled in the plan's shuffled order, the categories interleaved in
    proportion so that any prefix of the walk is balanced too."""
    limit = max_share * (sum(counts.values()) + sum(used.values()))
    used = dict(used)
    out = {}
    for kind in KINDS:
        seeds, n = plan.seeds(kind), counts.get(kind, 0)
        groups = _groups(seeds, plan.categories or {})
        if not n or not groups:
            out[kind] = seeds.iloc[:0]
            continue
        room = {c: limit - used.get(c, 0) for c in groups}
        alloc = allocate({c: len(rows) for c, rows in groups.items()}, n, room)
        for c, k in alloc.items():
            used[c] = used.get(c, 0) + k
        out[kind] = _walk(seeds, groups, alloc)
    return out


def _groups(seeds: pd.DataFrame, categories: dict[str, str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for pos, iid in enumerate(seeds["instruction_id"]):
        groups.setdefault(categories.get(iid, "unknown"), []).append(pos)
    return groups


def _walk(seeds: pd.DataFrame, groups: dict[str, list[int]], alloc: dict[str, int]):
    keys = []
    for c, k in alloc.items():
        rows = groups[c]
        keys += [((j + 0.5) / k, c, rows[j % len(rows)]) for j in range(k)]
    return seeds.iloc[[pos for _, _, pos in sorted(keys)]].reset_index(drop=True)


def seed_categories(frame: pd.DataFrame, offline: bool) -> dict[str, str]:
    """instruction_id -> category of each seed: the offline world's family when the world
    wrote the instructions (`offline`), else the seed's parent (or itself, for a seed of the
    initial data), as `lion_core.method.diversity` groups new instructions."""
    rows = frame.drop_duplicates("instruction_id")
    ids = rows["instruction_id"].tolist()  # columns as lists: itertuples over Arrow-backed
    if not offline:  # strings cost more than the work here (52K seeds: 1.9 s of 9)
        parents = rows["parent_id"].tolist()
        return {
            iid: f"seed {(p if isinstance(p, str) else iid)[:12]}"
            for iid, p in zip(ids, parents, strict=True)
        }
    from lion_core.offline.world import solve

    out: dict[str, str] = {}
    for iid, instruction, inp in zip(
        ids, rows["instruction"].tolist(), rows["input"].tolist(), strict=True
    ):
        inst = solve(str(instruction), inp if isinstance(inp, str) else "")
        out[iid] = inst.family if inst is not None else "unrecognised"
    return out


def n_requests(n_wanted: int, oversample: float) -> int:
    """Requests for `n_wanted` instructions: oversampled to make up for the filters."""
    return math.ceil(n_wanted * oversample - 1e-9) if n_wanted > 0 else 0


# ------------------------------------------------------------------------------------------
# Candidates and post-filters
# ------------------------------------------------------------------------------------------

_LEADING_ECHO = re.compile(
    r"^\s*(?:[*_#\s]*created\s+instruction[*_#\s]*[:：]?[*_#\s]*)+", re.IGNORECASE
)
# The prompt forbids its markers in the answer; any left after cleaning mean an echo.
_ECHO = re.compile(r"\b(?:given|created)\s+instruction\b", re.IGNORECASE)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`", "„": "“"}


def clean(text: str | None) -> str:
    """The generator's text without a leading "#Created Instruction#:" echo, surrounding
    quotes and whitespace."""
    if not text:
        return ""
    text = _LEADING_ECHO.sub("", text.strip()).strip()
    while len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and _quoted_whole(text):
        text = text[1:-1].strip()
    return text


def _quoted_whole(text: str) -> bool:
    """True if the first and last characters quote the whole text, not two separate quotes
    ('"Hello" and "World"'); apostrophes inside words ("don't") do not count."""
    inner = re.sub(r"(?<=\w)['’](?=\w)", "", text[1:-1])
    return text[0] not in inner and text[-1] not in inner


def post_filter(text: str, finish_reason: str | None, cfg: GeneratorConfig) -> str | None:
    """The status a cleaned candidate fails with, or None if it passes the paper's filters."""
    if finish_reason == "length":
        return "truncated"
    if not text:
        return "empty"
    if _ECHO.search(text):
        return "echo"
    if len(text.split()) < cfg.min_words:
        return "too_short"
    if text[0] in string.punctuation:
        return "punctuation"
    if cfg.drop_non_ascii_start and not text[0].isascii():
        return "non_ascii"
    return None


def generator_requests(
    seeds: pd.DataFrame, kind: Kind, count: int, start: int = 0
) -> list[ChatRequest]:
    """`count` requests walking the seeds in order (wrapping around); `sample` is the request's
    index in the round's requests of this kind (from `start`: a top-up pass continues the
    numbering), so a seed asked twice gets two answers, not one cached twice."""
    requests = []
    for k in range(count):
        seed = seeds.iloc[k % len(seeds)]
        seed_input = seed["input"] if isinstance(seed["input"], str) else ""
        messages = generator_messages(instruction_text(seed["instruction"], seed_input), kind)
        requests.append(ChatRequest.of(messages, tag=seed["instruction_id"], sample=start + k))
    return requests


def generate_candidates(
    seeds: pd.DataFrame,
    kind: Kind,
    n_wanted: int,
    client: Completer,
    cfg: GeneratorConfig,
    round: int,
    start: int = 0,
    count: int | None = None,
) -> pd.DataFrame:
    """Ask for ceil(n_wanted * oversample) new instructions (or `count`) from `seeds` (walked
    in order) and post-filter them: GENERATED_SCHEMA rows in request order, status "candidate"
    or the filter that dropped them. `start`: the first request's sample number (a top-up
    pass continues the kind's numbering)."""
    kind = _kind(kind)
    count = n_requests(n_wanted, cfg.oversample) if count is None else count
    if count and seeds.empty:
        raise ValueError(f"{n_wanted} {kind} instructions wanted but there are no {kind} seeds")
    requests = generator_requests(seeds, kind, count, start)
    results = client.run(requests, desc=f"generate {kind}") if requests else []
    if len(results) != len(requests):
        raise LLMError(f"generate {kind}: {len(requests)} requests, {len(results)} results")
    rows = [_candidate_row(r, kind, round, cfg) for r in results]
    return _frame(rows)[GENERATED_SCHEMA.names]


def _candidate_row(result: ChatResult, kind: Kind, round: int, cfg: GeneratorConfig) -> dict:
    row: dict[str, Any] = {
        "instruction_id": None,
        "instruction": None,
        "input": "",
        "reference": None,
        "source": kind,
        "parent_id": result.tag,
        "round": round,
        "status": None,
        "error": None,
        "request_key": result.key,
    }
    if not result.ok:
        row.update(status="failed", error=result.error or "request failed")
        return row
    text = clean(result.text)
    if text:
        row.update(instruction=text, instruction_id=instruction_id(text, ""))
    dropped = post_filter(text, result.finish_reason, cfg)
    row["status"] = dropped or "candidate"
    if dropped == "truncated":
        row["error"] = "finish_reason=length"
    return row


# ------------------------------------------------------------------------------------------
# Novelty
# ------------------------------------------------------------------------------------------


def select_novel(
    candidates: pd.DataFrame,
    pool_instructions: list[str],
    n_hard: int,
    n_easy: int,
    threshold: float = 0.7,
    *,
    category_of: dict[str, str] | None = None,
    room: dict[str, int] | None = None,
    relax: bool = True,
) -> pd.DataFrame:
    """Final statuses of both kinds' candidates: exact duplicates, then ROUGE-L novelty against
    the pool and every candidate kept before, then at most n_hard / n_easy kept.

    Candidates are judged in an interleaved order (hard and easy taking turns in proportion to
    their numbers), so neither kind is always compared against the other's kept ones. The result
    is exactly that of judging one candidate at a time and stopping a kind once it is full: a
    kind's novel candidates beyond its quota are "surplus" and are not compared against.
    Rows come back hard first, then easy, each in request order.

    With `room` (category -> how many more it may keep; a candidate's category is its parent
    seed's, `category_of`), a candidate of a full category is "capped" and not compared
    against; if a kind is still short at the end and `relax`, the capped ones are judged after
    all, in order (the seeds left no other way to fill the round).
    """
    frame = _frame(candidates.to_dict("records"))
    ranked = _interleaved(frame)
    need = {"hard": int(n_hard), "easy": int(n_easy)}
    room = dict(room) if room is not None else None
    cat = [
        (category_of or {}).get(p, "unknown") if isinstance(p, str) else "unknown"
        for p in frame["parent_id"]
    ]

    def full(i: int) -> str | None:
        if need[frame.at[i, "source"]] == 0:
            return "surplus"
        if room is not None and room.get(cat[i], 0) <= 0:
            return "capped"
        return None

    # Exact duplicates (same text as a pool instruction or an earlier candidate).
    seen_pool = {_norm(t) for t in pool_instructions}
    seen: set[str] = set()
    queue: list[int] = []
    for i in ranked:
        if frame.at[i, "status"] != "candidate":
            continue
        text = _norm(frame.at[i, "instruction"])
        if text in seen_pool or text in seen:
            frame.at[i, "status"] = "duplicate"
            continue
        seen.add(text)
        queue.append(i)

    # Novelty, one pass per change of quota state.
    kept_texts: list[str] = []
    while queue:
        left = []
        for i in queue:
            reason = full(i)
            if reason:
                frame.at[i, "status"] = reason
            else:
                left.append(i)
        queue = left
        if not queue:
            break
        flags = filter_novel(
            [frame.at[i, "instruction"] for i in queue],
            list(pool_instructions) + kept_texts,
            threshold,
        )
        rest: list[int] = []
        for pos, (i, keep) in enumerate(zip(queue, flags, strict=True)):
            reason = full(i)
            if reason:
                frame.at[i, "status"] = reason
                if keep:
                    # Its kind or category filled up during this pass and the later flags
                    # took this one as kept: judge the rest again without it.
                    rest = queue[pos + 1 :]
                    break
                continue
            if keep:
                frame.at[i, "status"] = "kept"
                kept_texts.append(frame.at[i, "instruction"])
                need[frame.at[i, "source"]] -= 1
                if room is not None:
                    room[cat[i]] = room.get(cat[i], 0) - 1
            else:
                frame.at[i, "status"] = "not_novel"
        queue = rest

    capped = frame["status"] == "capped"
    if relax and room is not None and capped.any() and any(need.values()):
        frame = _judge_again(
            frame, capped, lambda again: select_novel(
                again, list(pool_instructions) + kept_texts, need["hard"], need["easy"],
                threshold,
            ),
        )  # fmt: skip
    frame = frame.sort_values(["_kind_rank", "_row"], kind="stable")
    return frame[GENERATED_SCHEMA.names].reset_index(drop=True)


def _judge_again(
    frame: pd.DataFrame, rows: pd.Series, judge: Callable[[pd.DataFrame], pd.DataFrame]
) -> pd.DataFrame:
    """`frame` with the statuses of `rows` (a mask) replaced by what `judge` makes of them as
    candidates again, matched back by (source, request_key, instruction_id)."""
    judged = judge(frame.loc[rows, GENERATED_SCHEMA.names].assign(status="candidate"))
    status = dict(zip(_row_keys(judged), judged["status"], strict=True))
    frame = frame.copy()
    frame.loc[rows, "status"] = [status[k] for k in _row_keys(frame.loc[rows])]
    return frame


def _row_keys(frame: pd.DataFrame) -> list[tuple]:
    """What identifies a candidate row: its kind, its request and its text."""
    return list(zip(frame["source"], frame["request_key"], frame["instruction_id"], strict=True))


def top_up_plan(
    plan: SeedPlan, generated: pd.DataFrame, generator: GeneratorConfig
) -> dict[str, pd.DataFrame]:
    """The seeds of a top-up pass, per kind short of kept instructions: one row per request,
    (shortfall × oversample) of them. Without a category cap, the kind's seeds walked on from
    where the requests so far stopped; with one, the shortfall spread over the categories that
    still have room (max_category_share of the round's wanted instructions, less what each
    has kept), in proportion to their seeds."""
    short, asked = shortfall(generated, plan), requests_so_far(generated)
    out = {}
    if plan.categories is not None and generator.max_category_share < 1:
        kept = generated.loc[generated["status"] == "kept", "parent_id"]
        room = category_room(kept, plan.categories, plan.n_hard + plan.n_easy, generator)
        for kind in KINDS:
            # the distinct seeds (the first pass's walk repeats them), in the walk's order
            seeds = plan.seeds(kind).drop_duplicates("instruction_id").reset_index(drop=True)
            groups = _groups(seeds, plan.categories)
            if not short[kind] or not groups:
                continue
            alloc = allocate({c: len(r) for c, r in groups.items()}, short[kind], room)
            for c, k in alloc.items():
                room[c] = room.get(c, 0) - k
            alloc = {c: n_requests(k, generator.oversample) for c, k in alloc.items()}
            out[kind] = _walk(seeds, groups, alloc)
        return out
    for kind in KINDS:
        seeds, n = plan.seeds(kind), n_requests(short[kind], generator.oversample)
        if not n or seeds.empty:
            continue
        start = asked[kind] % len(seeds)
        out[kind] = seeds.iloc[[(start + j) % len(seeds) for j in range(n)]].reset_index(drop=True)
    return out


def category_room(
    kept_parents: pd.Series | list,
    categories: dict[str, str],
    wanted: int,
    generator: GeneratorConfig,
) -> dict[str, int]:
    """How many more new instructions each category may keep this round: max_category_share
    of the `wanted` ones (at least 1), less those kept so far (by parent seed's category)."""
    cap = max(1, math.floor(generator.max_category_share * wanted + 1e-9))
    room = {c: cap for c in set(categories.values()) | {"unknown"}}
    for parent in kept_parents:
        c = categories.get(parent, "unknown")
        room[c] = room.get(c, cap) - 1
    return room


def fill(
    found: pd.DataFrame,
    pool_instructions: list[str],
    plan: SeedPlan,
    generator: GeneratorConfig,
    threshold: float,
    ask: Callable[[pd.DataFrame, Kind, int], pd.DataFrame],
) -> tuple[pd.DataFrame, int, SeedPlan]:
    """Judge the first pass's candidates (`select_novel`), then, while a kind is short and
    passes are left (generator.max_attempts), ask for a top-up (`top_up_plan`; `ask(seeds, kind,
    start)` returns the candidates of one request per seed row, sample numbers from `start`)
    and judge it against the pool and everything kept so far. With a category cap, a kind whose
    seeds' categories are all full cedes its shortfall to the other kind (`cede`) while another
    pass follows, and the other kind's surplus candidates are judged again before anything more
    is asked (they were paid for). Returns every candidate with its status (hard first, then
    easy, each in request order), the passes made and the plan as it ended (its wanted counts
    per kind)."""
    capped = generator.max_category_share < 1 and plan.categories is not None
    wanted = plan.n_hard + plan.n_easy

    def judge(frame: pd.DataFrame, so_far: pd.DataFrame, last: bool) -> pd.DataFrame:
        kept = so_far[so_far["status"] == "kept"]
        short = shortfall(so_far, plan)
        room = None
        if capped:
            room = category_room(kept["parent_id"], plan.categories or {}, wanted, generator)
        return select_novel(
            frame, list(pool_instructions) + kept["instruction"].tolist(), short["hard"],
            short["easy"], threshold, category_of=plan.categories, room=room, relax=last,
        )  # fmt: skip

    def cede_and_rejudge(generated: pd.DataFrame) -> pd.DataFrame:
        nonlocal plan
        before, plan = plan, cede(plan, generated, generator)
        surplus = generated["status"] == "surplus"
        if plan is before or not surplus.any():
            return generated
        # the receiving kind's quota grew: its surplus candidates may now be kept
        return _judge_again(
            generated, surplus, lambda again: judge(again, generated[~surplus], False)
        )

    generated = judge(found, found.iloc[:0], last=generator.max_attempts == 1)
    # Cede only when another pass follows: the shortfall left after the last pass is the kind's.
    if capped and generator.max_attempts > 1:
        generated = cede_and_rejudge(generated)
    attempts = 1
    while attempts < generator.max_attempts and any(shortfall(generated, plan).values()):
        walks = top_up_plan(plan, generated, generator)
        if not walks:
            break
        attempts += 1
        asked = requests_so_far(generated)
        more = pd.concat(
            [ask(seeds, kind, asked[kind]) for kind, seeds in walks.items()], ignore_index=True
        )
        judged = judge(more, generated, last=attempts == generator.max_attempts)
        generated = pd.concat([generated, judged], ignore_index=True)
        rank = generated["source"].map({k: i for i, k in enumerate(KINDS)})
        generated = generated.iloc[rank.argsort(kind="stable")].reset_index(drop=True)
        if capped and attempts < generator.max_attempts:
            generated = cede_and_rejudge(generated)
    return generated, attempts, plan


def cede(plan: SeedPlan, generated: pd.DataFrame, generator: GeneratorConfig) -> SeedPlan:
    """The plan with a kind's shortfall handed to the other kind when every category of its
    seeds is at the category cap (`category_room`) and the other kind's seeds still have room:
    the cap binds before the kinds' split (pools.hard_share), and the round still gets its new
    instructions. Nothing moves while the short kind has room (its top-ups may still fill it)
    or the other has none (then the last pass relaxes the cap: the seeds leave no other way)."""
    short = shortfall(generated, plan)
    if not any(short.values()) or plan.categories is None:
        return plan
    kept = generated.loc[generated["status"] == "kept", "parent_id"]
    room = category_room(kept, plan.categories, plan.n_hard + plan.n_easy, generator)

    def has_room(kind: Kind) -> bool:
        ids = plan.seeds(kind)["instruction_id"].unique()
        return any(room.get(plan.categories.get(i, "unknown"), 0) > 0 for i in ids)

    for kind, other in (("hard", "easy"), ("easy", "hard")):
        if short[kind] and not has_room(kind) and has_room(other):
            wanted = {k: plan.wanted(k) for k in KINDS}
            wanted[kind] -= short[kind]
            wanted[other] += short[kind]
            return replace(plan, n_hard=wanted["hard"], n_easy=wanted["easy"])
    return plan


def shortfall(generated: pd.DataFrame, plan: SeedPlan) -> dict[str, int]:
    """Per kind, how many more kept instructions the plan wants."""
    kept = generated[generated["status"] == "kept"]["source"].value_counts()
    return {k: max(0, plan.wanted(k) - int(kept.get(k, 0))) for k in KINDS}


def requests_so_far(generated: pd.DataFrame) -> dict[str, int]:
    """Per kind, the generator requests already made (one candidate row each)."""
    counts = generated["source"].value_counts()
    return {k: int(counts.get(k, 0)) for k in KINDS}


def _interleaved(frame: pd.DataFrame) -> list[int]:
    """Row indices with the kinds taking turns in proportion to their counts."""
    keys = []
    for _, group in frame.groupby("source", sort=True):
        n = len(group)
        for rank, (i, kind_rank) in enumerate(zip(group["_row"], group["_kind_rank"], strict=True)):
            keys.append(((rank + 0.5) / n, kind_rank, i))
    return [int(i) for _, _, i in sorted(keys)]


def _norm(text: Any) -> str:
    return " ".join(str(text).split()) if text is not None else ""


def new_pool_rows(generated: pd.DataFrame) -> pd.DataFrame:
    """The kept instructions as POOL_SCHEMA rows, in `generated` order."""
    kept = generated[generated["status"] == "kept"]
    return kept[POOL_SCHEMA.names].reset_index(drop=True).astype({"round": "int32"})


def holdback(rows: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """The share of new instructions held back from the next round's training (pools.holdback):
    a seeded draw, stratified by kind (source) so hard- and easy-seeded ones are held back
    alike, independent of the rows' order; none when `share` is 0."""
    if share <= 0 or rows.empty:
        return rows.iloc[:0]
    rng = np.random.default_rng([seed, 0x401D])
    picked = []
    for _, group in rows.sort_values("instruction_id", kind="stable").groupby("source", sort=True):
        n = math.floor(share * len(group) + 0.5)
        picked.append(group.iloc[np.sort(rng.permutation(len(group))[:n])])
    held = pd.concat(picked)
    return rows[rows["instruction_id"].isin(held["instruction_id"])].reset_index(drop=True)


# ------------------------------------------------------------------------------------------


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"kind must be 'hard' or 'easy', got {kind!r}")
    return kind  # type: ignore[return-value]


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """GENERATED_SCHEMA rows plus helper columns (_row: position, _kind_rank: hard=0, easy=1)."""
    frame = pd.DataFrame(rows, columns=GENERATED_SCHEMA.names)
    frame["input"] = frame["input"].fillna("")
    frame = frame.astype({"round": "int32"}) if len(frame) else frame
    frame["_kind_rank"] = [KINDS.index(k) if k in KINDS else 2 for k in frame["source"]]
    frame["_row"] = range(len(frame))
    return frame
