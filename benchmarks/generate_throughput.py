"""Student answers/s: batched generation, the served path, and one prompt at a time, in one run.

All answer real instructions from ../shared/data with the same Llama-shaped model (built from
config; bf16 on GPU, fp32 on CPU), greedy, with the same prompts (Alpaca template):

- batched (ours, `engine: hf`): lion_core.student.generator.BatchedGenerator: prompts sorted by
  length, left-padded, batches filling the token budget;
- served (`engine: server` with lion serve-student): the same model behind
  lion_core.student.server (OpenAI API on loopback, batches formed from the requests in flight),
  in its own process as `engine: server` runs it (this script started again with --serve-port,
  building the same model, tokenizer and end-of-answer rule from the same seed), the prompts
  sent as token ids through the LLM client (`--concurrency` in flight), as
  lion_core.student.served does;
- one at a time (the original code's way): `model.generate` on each prompt alone.

An untrained model would never stop (or stop at random), which misrepresents both. So every answer
is ended, in both modes, after as many tokens as the dataset's reference answer to that
instruction has (capped at --max-new-tokens): answer lengths follow the real distribution, and a
batch runs as long as its longest answer, as it would with a trained student.
Target: batched >= 5x answers/s on the CPU. The served path is printed beside the batched one,
with their ratio. vLLM/SGLang are not run here (they need a GPU): the same served path reaches
them through student.generation.server.command (docs/student.md).

    .venv/bin/python benchmarks/generate_throughput.py
    .venv/bin/python benchmarks/generate_throughput.py --repeat 3   # best of 3, busy machine
    python benchmarks/generate_throughput.py --device cuda --model-size 1b
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import LogitsProcessor, LogitsProcessorList

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from train_throughput import (  # noqa: E402
    DATA,
    SIZES,
    _sync,
    build_model,
    load_records,
    measure_peak,
    records_tokenizer,
)

from lion_core.config import EndpointConfig, StudentGenerationConfig  # noqa: E402
from lion_core.llm.client import LLMClient  # noqa: E402
from lion_core.llm.costs import FREE  # noqa: E402
from lion_core.llm.types import ChatRequest  # noqa: E402
from lion_core.ops.supervise import ProcessGroup, free_port  # noqa: E402
from lion_core.student.attention import sdpa_kernels  # noqa: E402
from lion_core.student.data import encode_prompt  # noqa: E402
from lion_core.student.generator import BatchedGenerator  # noqa: E402
from lion_core.student.served import wait_ready  # noqa: E402
from lion_core.student.server import StudentService, serve  # noqa: E402

_QUIET = logging.getLogger("benchmark.server")  # the server's output: only on failure
_QUIET.setLevel(logging.WARNING)


def _key(tokens: list[int]) -> str:
    return hashlib.sha1(json.dumps(tokens).encode()).hexdigest()


class EndAfter(LogitsProcessor):
    """Forces EOS once a row has generated its target number of tokens. The target is looked
    up by the row's prompt tokens, so it is the same in a batch and alone."""

    def __init__(self, targets: dict[str, int], pad_id: int, eos_id: int) -> None:
        self.targets, self.pad_id, self.eos_id = targets, pad_id, eos_id
        self.last: torch.Tensor | None = None
        self.width = 0
        self.row_targets: list[int] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor):
        last = self.last
        continued = (
            last is not None
            and last.shape[0] == input_ids.shape[0]
            and last.shape[1] + 1 == input_ids.shape[1]
            and torch.equal(input_ids[:, :-1], last)
        )
        if not continued:
            self.width = input_ids.shape[1]  # a new generate call: this is the prompt
            self.row_targets = [
                self.targets[_key([t for t in row if t != self.pad_id])]
                for row in input_ids.tolist()
            ]
        self.last = input_ids
        done = input_ids.shape[1] - self.width
        for r, target in enumerate(self.row_targets):
            if done >= target - 1:  # the target counts the EOS token itself
                scores[r] = float("-inf")
                scores[r, self.eos_id] = 0.0
        return scores


def one_at_a_time(model, tok, prompts: list[list[int]], max_new: int, processor) -> list[str]:
    """The original way: model.generate on each prompt alone."""
    out = []
    for p in prompts:  # (sdpa kernels as BatchedGenerator uses them)
        ids = torch.tensor([p], device=model.device)
        with torch.no_grad(), sdpa_kernels():
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                logits_processor=LogitsProcessorList([processor]),
            )
        out.append(tok.decode(gen[0, len(p) :], skip_special_tokens=True).strip())
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model-size", default=None, choices=list(SIZES))
    parser.add_argument("--prompts", type=int, default=None, help="prompts answered batched")
    parser.add_argument("--baseline-prompts", type=int, default=None, help="answered one by one")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--token-budget", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=None, help="served: requests in flight")
    parser.add_argument("--no-served", action="store_true", help="skip the served path")
    parser.add_argument("--serve-port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1, help="best of N (a busy machine)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.model_size = args.model_size or ("1b" if gpu else "tiny")
    args.prompts = args.prompts or (1024 if gpu else 256)
    args.baseline_prompts = args.baseline_prompts or 16
    args.max_new_tokens = args.max_new_tokens or (128 if gpu else 48)
    args.token_budget = args.token_budget or (
        131072 if gpu else StudentGenerationConfig().token_budget
    )
    args.concurrency = args.concurrency or (512 if gpu else 256)
    torch.manual_seed(0)

    frame = load_records(limit=max(args.prompts, 2000))
    tok = records_tokenizer(frame, args.model_size)
    frame = frame.drop_duplicates(["instruction", "input"]).head(args.prompts).reset_index()
    prompts = [
        encode_prompt(tok, i, x, "alpaca")
        for i, x in zip(frame["instruction"], frame["input"], strict=True)
    ]
    targets = {
        _key(p): max(1, min(args.max_new_tokens, len(tok.encode(a, add_special_tokens=False)) + 1))
        for p, a in zip(prompts, frame["answer"], strict=True)
    }
    lengths = sorted(targets.values())
    print(
        f"{len(prompts)} prompts from {DATA.name}: prompt tokens median "
        f"{sorted(map(len, prompts))[len(prompts) // 2]}; answer tokens median "
        f"{lengths[len(lengths) // 2]} (cap {args.max_new_tokens})",
        flush=True,
    )
    dtype = torch.bfloat16 if gpu else torch.float32
    model = build_model(
        args.model_size, tok, device=args.device, dtype=dtype, attn="sdpa", max_length=2048
    )
    model.config.use_cache = True
    model.eval()
    processor = EndAfter(targets, tok.pad_token_id, tok.eos_token_id)
    settings = StudentGenerationConfig(
        max_new_tokens=args.max_new_tokens, token_budget=args.token_budget
    )
    gen = BatchedGenerator(
        model,
        tok,
        settings,
        "alpaca",
        generate_kwargs={"logits_processor": LogitsProcessorList([processor])},
    )
    rows = pd.DataFrame(
        {
            "instruction_id": [str(i) for i in range(len(frame))],
            "instruction": frame["instruction"],
            "input": frame["input"],
        }
    )
    if args.serve_port:  # the served path's server process
        service = StudentService(
            model,
            tok,
            template="alpaca",
            token_budget=args.token_budget,
            max_new_tokens=args.max_new_tokens,
            generate_kwargs={"logits_processor": LogitsProcessorList([processor])},
        )
        serve(service, port=args.serve_port)
        return {}
    # warm-up (kernels, allocator) on a few prompts, both paths
    list(gen.answer(rows.head(4)))
    one_at_a_time(model, tok, prompts[:2], args.max_new_tokens, processor)

    serving = None
    if not args.no_served:
        port = free_port()
        cmd = [sys.executable, __file__, "--device", args.device, "--model-size",
               args.model_size, "--prompts", str(args.prompts), "--max-new-tokens",
               str(args.max_new_tokens), "--token-budget", str(args.token_budget),
               "--serve-port", str(port)]  # fmt: skip
        serving = ProcessGroup(cmd, logger=_QUIET).__enter__()
        base_url = f"http://127.0.0.1:{port}/v1"
        wait_ready(base_url, "student", 600, group=serving)
        client = LLMClient(
            EndpointConfig(
                base_url=base_url,
                model="student",
                temperature=0.0,
                max_tokens=args.max_new_tokens,
                concurrency=args.concurrency,
                cache_shard_size=len(prompts),
            ),
            role="student",
            cache=None,
            pricing={"student": FREE},
            extra_body={"stop_token_ids": [tok.eos_token_id]},
            allow_empty=True,
        )
        requests = [ChatRequest.completion(p, tag=str(i)) for i, p in enumerate(prompts)]
        client.run(requests[:8])  # warm-up: connections, the server's worker

    k = args.baseline_prompts
    batched_s = single_s = served_s = float("inf")
    served: list = []
    for _ in range(args.repeat):  # alternate the modes; keep the best time of each
        _sync(args.device)
        t = time.perf_counter()
        answers = [a for batch in gen.answer(rows) for a in batch]
        _sync(args.device)
        batched_s = min(batched_s, time.perf_counter() - t)
        t = time.perf_counter()
        single = one_at_a_time(model, tok, prompts[:k], args.max_new_tokens, processor)
        _sync(args.device)
        single_s = min(single_s, time.perf_counter() - t)
        if serving is not None:
            t = time.perf_counter()
            served = client.run(requests)
            _sync(args.device)
            served_s = min(served_s, time.perf_counter() - t)
    if serving is not None:
        serving.stop()
    batched_tokens = sum(a.completion_tokens for a in answers)
    by_id = {a.instruction_id: a.answer for a in answers}
    same = sum(by_id[str(i)] == s for i, s in enumerate(single))

    batched_rate, single_rate = len(answers) / batched_s, k / single_s
    served_rate = len(served) / served_s if served else None
    served_same = sum(
        r.ok and (r.text or "").strip() == by_id[r.tag] for r in served
    )  # greedy: the served answers are the batched ones
    summary = {
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "model_size": args.model_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompts": len(answers),
        "baseline_prompts": k,
        "max_new_tokens": args.max_new_tokens,
        "token_budget": gen.budget,
        "oom_events": gen.oom_events,
        "batched_answers_per_s": batched_rate,
        "batched_tokens_per_s": batched_tokens / batched_s,
        "single_answers_per_s": single_rate,
        "batched_over_single": batched_rate / single_rate,
        "identical_answers": f"{same}/{k}",
        "served_answers_per_s": served_rate,
        "served_over_batched": served_rate / batched_rate if served_rate else None,
        "served_concurrency": args.concurrency if served else None,
        "served_identical_to_batched": f"{served_same}/{len(served)}" if served else None,
        "peak_tflops": measure_peak(args.device) / 1e12 if gpu else None,
    }
    print(
        f"batched:      {batched_rate:8.2f} answers/s ({summary['batched_tokens_per_s']:.0f} "
        f"new tokens/s, {len(answers)} prompts, budget {gen.budget} tokens)"
    )
    if served_rate:
        print(
            f"served:       {served_rate:8.2f} answers/s (lion serve-student over HTTP, "
            f"{args.concurrency} in flight; {served_same}/{len(served)} answers identical to "
            "batched)"
        )
    print(f"one at a time:{single_rate:8.2f} answers/s ({k} prompts)")
    print(
        f"model {args.model_size} ({summary['parameters'] / 1e6:.0f}M parameters) on "
        f"{summary['device']}; {same}/{k} answers identical in both modes"
    )
    print(
        f"batched / one at a time answers/s: {summary['batched_over_single']:.1f}x (target >= 5x)"
    )
    if served_rate:
        print(f"served / batched answers/s: {summary['served_over_batched']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
