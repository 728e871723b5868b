"""The training program each rank runs: `python -m lion_core.student.train --spec job.json`.

Started by `launch.train_student` through the `deepspeed` launcher (one process per GPU, or per
CPU rank) or as one plain process. It fine-tunes the student with the transformers `Trainer`
(DeepSpeed ZeRO when launched by deepspeed), commits a checkpoint to the run's storage every
`save_steps` optimizer steps, resumes from the checkpoint named in the job spec, and writes the
final model in Hugging Face format with a completion marker.

The job spec (JSON, written by the launcher):
    config            LionConfig as a dict
    round             the Lion round k
    train_data        local Parquet file (instruction, input, answer)
    init              local folder or hub id of the model to start from
    revision          hub revision of `init`, if a hub id
    output_dir        local folder where the Trainer writes checkpoint-<step>/
    final_dir         local folder for the final model
    tensorboard_dir   local folder for TensorBoard event files (training.report_to)
    resume            local checkpoint folder to resume from, or null
    storage_root      the run's root URI, storage_options its fsspec options
    checkpoints_rel   where checkpoints go in the run's storage (round=<k>/checkpoints)
    student_rel       where the final model goes (round=<k>/student)
    launcher          "deepspeed" or "python"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

KEEP_CHECKPOINTS = 2  # committed checkpoints kept in storage; older ones are deleted


def _rank() -> tuple[int, int, int]:
    """(global rank, local rank, world size) from the launcher's environment."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def skip_cpu_shm_op() -> None:
    """On CPU ranks, keep DeepSpeed from JIT-building its shared-memory collective op.

    DeepSpeed builds `deepspeed_shm_comm` (g++, about a minute on two cores) when it sets up
    communication on the CPU accelerator, but uses it only for `inference_all_reduce`, never in
    ZeRO training. The build is a cost and a risk: its lock file, left behind by a rank killed
    mid-build, makes every later build wait forever. DeepSpeed's `build_shm_op` skips an op
    marked incompatible in `deepspeed.ops.__compatible_ops__` (a module-level dict whose edits
    persist by design), and collectives then go through torch.distributed (gloo).
    """
    if torch.cuda.is_available():
        return
    try:
        import deepspeed.ops
    except ImportError:  # the plain python launcher without DeepSpeed installed
        return
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def say(msg: str) -> None:
    """A log line from rank 0 (the launcher streams it to the caller's logger)."""
    if _rank()[0] == 0:
        print(f"[lion-train] {msg}", flush=True)


def make_callbacks(spec: dict[str, Any]):
    """Callbacks that log progress and commit each checkpoint to the run's storage."""
    from transformers import TrainerCallback

    from lion_core.run.storage import Storage
    from lion_core.student.checkpoints import complete_checkpoints, mark_complete

    storage = Storage(spec["storage_root"], spec.get("storage_options"))
    ckpt_rel = spec["checkpoints_rel"]

    class Progress(TrainerCallback):
        """Concise log lines; counts the steps this attempt ran (proof of resume)."""

        def __init__(self) -> None:
            self.steps_this_attempt = 0
            self.first_step: int | None = None
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kw):
            self.steps_this_attempt += 1
            if self.first_step is None:
                self.first_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            parts = [f"step {state.global_step}/{state.max_steps}"]
            for key in ("loss", "learning_rate", "grad_norm", "train_loss"):
                if key in logs:
                    parts.append(f"{key} {logs[key]:.4g}")
            parts.append(f"elapsed {time.time() - self.t0:.1f}s")
            say(" ".join(parts))

    class CommitCheckpoint(TrainerCallback):
        """After the Trainer saved checkpoint-<step> locally: upload it (each node its own
        files), then rank 0 writes its completion marker and drops older checkpoints."""

        def on_save(self, args, state, control, **kw):
            name = f"checkpoint-{state.global_step}"
            local = Path(args.output_dir) / name
            rank, local_rank, _ = _rank()
            _barrier()
            if local_rank == 0:
                storage.put_dir(local, f"{ckpt_rel}/{name}")
            _barrier()
            if rank == 0:
                mark_complete(storage, f"{ckpt_rel}/{name}", {"global_step": state.global_step})
                for step in complete_checkpoints_older(state.global_step):
                    storage.delete(f"{ckpt_rel}/checkpoint-{step}", recursive=True)
                say(f"checkpoint {name} committed to {storage.uri(ckpt_rel)}")
            if local_rank == 0 and not storage.is_local:
                for old in Path(args.output_dir).glob("checkpoint-*"):
                    if old.name != name:
                        shutil.rmtree(old, ignore_errors=True)
            _barrier()

    def complete_checkpoints_older(step: int) -> list[int]:
        steps = [s for s in complete_checkpoints(storage, spec["round"]) if s < step]
        return steps[: max(0, len(steps) - (KEEP_CHECKPOINTS - 1))]

    return Progress(), CommitCheckpoint()


def checkpointing_argument(arguments_class) -> str:
    """The TrainingArguments field that turns activation checkpointing on: transformers 5.2x
    renamed `gradient_checkpointing` to `activation_checkpointing` (the old name a deprecated
    alias); 5.17, the release of the GPU machines' image, knows only the old one."""
    names = {f.name for f in dataclasses.fields(arguments_class)}
    new = "activation_checkpointing"
    return new if new in names else "gradient_checkpointing"


def training_arguments(spec: dict[str, Any], cfg, *, n_rows: int, on_gpu: bool, bf16: bool):
    from transformers import TrainingArguments

    from lion_core.student.ds_config import deepspeed_config

    t = cfg.training
    kwargs: dict[str, Any] = {}
    if spec["launcher"] == "deepspeed":
        kwargs["deepspeed"] = deepspeed_config(t, bf16=bf16)
    kwargs[checkpointing_argument(TrainingArguments)] = t.gradient_checkpointing
    _, _, world = _rank()
    steps_per_epoch = math.ceil(
        n_rows / (t.micro_batch_size * world * t.gradient_accumulation_steps)
    )
    return TrainingArguments(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        warmup_steps=int(t.warmup_ratio * (t.max_steps or steps_per_epoch * t.epochs)),
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # CommitCheckpoint prunes, after the upload
        bf16=bf16,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=list(t.report_to) or "none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not on_gpu,
        save_only_model=False,
        **kwargs,
    )


def run(spec: dict[str, Any]) -> None:
    """One training job, every rank: data, model, Trainer, then the final model committed."""
    from transformers import PrinterCallback, Trainer, set_seed

    from lion_core.config import LionConfig
    from lion_core.student.attention import sdpa_kernels
    from lion_core.student.model import load_tokenizer

    cfg = LionConfig.model_validate(spec["config"])
    t = cfg.training
    rank, local_rank, world = _rank()
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
    elif spec["launcher"] == "deepspeed":
        skip_cpu_shm_op()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    set_seed(cfg.seed)

    tok = load_tokenizer(
        spec["init"], revision=spec.get("revision"), trust_remote_code=cfg.student.trust_remote_code
    )
    dataset, collator, stats = training_rows(spec, cfg, tok)
    layout = "packed" if t.packing else "padded"
    say(f"{layout}: {len(dataset)} rows of at most {t.max_length} tokens; world size {world}")
    model = trainable_model(spec, cfg)

    if "tensorboard" in t.report_to and spec.get("tensorboard_dir"):
        # transformers' TensorBoardCallback reads its folder from the environment
        os.environ["TENSORBOARD_LOGGING_DIR"] = spec["tensorboard_dir"]
    args = training_arguments(spec, cfg, n_rows=len(dataset), on_gpu=on_gpu, bf16=bf16)
    progress, commit = make_callbacks(spec)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[progress, commit],
    )
    trainer.remove_callback(PrinterCallback)
    resume = spec.get("resume")
    if resume:
        say(f"resuming from {resume}")
    with sdpa_kernels():
        result = trainer.train(resume_from_checkpoint=resume)
    resumed_from = int(Path(resume).name.split("-")[-1]) if resume else None
    say(
        f"trained to global step {trainer.state.global_step} "
        f"({progress.steps_this_attempt} steps in this attempt, resumed from {resumed_from})"
    )
    info = {
        "round": spec["round"],
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_from,
        "steps_this_attempt": progress.steps_this_attempt,
        "train_loss": result.training_loss,
        "data": stats,
        "layout": layout,
        "world_size": world,
        "zero_stage": t.zero_stage if spec["launcher"] == "deepspeed" else None,
        "bf16": bf16,
        "lora": t.lora is not None,
        "log_history": trainer.state.log_history,
    }
    commit_final_model(spec, cfg, trainer, model, tok, info, rank)


def training_rows(spec: dict[str, Any], cfg, tok) -> tuple[Any, Any, dict[str, int]]:
    """The job's training data, tokenized (loss on response tokens only) and packed or padded:
    (dataset, collator, statistics); SystemExit when no example is trainable."""
    from lion_core.student.data import build_dataset, tokenize_frame

    t = cfg.training
    frame = pd.read_parquet(spec["train_data"])
    data = tokenize_frame(frame, tok, cfg.student.prompt_template, t.max_length)
    stats = data.stats()
    say(
        f"{stats['examples']} examples ({stats['tokens']} tokens, {stats['response_tokens']} "
        f"trained on) from {stats['rows']} rows; {stats['truncated']} truncated at "
        f"{t.max_length} tokens, {stats['dropped']} dropped (no answer token fits)"
    )
    if not data.examples:
        raise SystemExit(f"no trainable examples in {spec['train_data']}")
    dataset, collator = build_dataset(
        data.examples,
        packing=t.packing,
        max_length=t.max_length,
        pad_id=tok.pad_token_id,
        attn_implementation=cfg.student.attn_implementation,
        seed=cfg.seed,
    )
    return dataset, collator, stats


def trainable_model(spec: dict[str, Any], cfg):
    """The model to train: the job's starting weights, without a KV cache (packed examples must
    not see each other), with the attention that is used, wrapped in LoRA when configured."""
    from lion_core.student.attention import training_attention
    from lion_core.student.model import for_training

    t = cfg.training
    model = load_init_model(spec, cfg)
    for_training(model)
    attn = training_attention(cfg.student.attn_implementation, t.packing)
    if attn != cfg.student.attn_implementation:
        model.set_attn_implementation(attn)  # only the attention that is used (attention.py)
    if t.lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model,
        LoraConfig(
            r=t.lora.r,
            lora_alpha=t.lora.alpha,
            lora_dropout=t.lora.dropout,
            target_modules=list(t.lora.target_modules),
            task_type="CAUSAL_LM",
        ),
    )


def commit_final_model(spec: dict[str, Any], cfg, trainer, model, tok, info, rank: int) -> None:
    """Save the trained model (LoRA merged into the base) with its tokenizer and
    train_result.json, and commit it to the run's storage, marked complete last."""
    from lion_core.run.storage import Storage
    from lion_core.student.checkpoints import mark_complete, write_json_file

    lora = cfg.training.lora is not None
    final = Path(spec["final_dir"])
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir(parents=True, exist_ok=True)
    _barrier()
    target = final / "adapter" if lora else final
    base_model = model.get_base_model() if lora else model
    base_model.config.use_cache = True  # the saved model is for generation
    trainer.save_model(str(target))  # every rank: ZeRO-3 gathers the weights to rank 0
    if rank == 0:
        if lora:
            _merge_lora(spec, cfg, target, final)
        tok.save_pretrained(final)
        write_json_file(final / "train_result.json", info)
        storage = Storage(spec["storage_root"], spec.get("storage_options"))
        storage.put_dir(final, spec["student_rel"])
        mark_complete(storage, spec["student_rel"], {"global_step": trainer.state.global_step})
        say(f"final model committed to {storage.uri(spec['student_rel'])}")
    _barrier()


def load_init_model(spec: dict[str, Any], cfg):
    """The model this job starts from (spec["init"]), in fp32: what is trained, and the base
    that LoRA adapters are merged into."""
    from lion_core.student.model import load_model

    return load_model(
        spec["init"],
        dtype=torch.float32,
        attn_implementation=cfg.student.attn_implementation,
        revision=spec.get("revision"),
        trust_remote_code=cfg.student.trust_remote_code,
    )


def _merge_lora(spec: dict[str, Any], cfg, adapter_dir: Path, final: Path) -> None:
    """Fold the trained adapters into a copy of the base model, saved whole: later rounds and
    generation load a plain model. The adapters stay in final/adapter/."""
    from peft import PeftModel

    base = load_init_model(spec, cfg)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(final)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="job spec JSON written by the launcher")
    parser.add_argument("--local_rank", type=int, default=None, help="set by deepspeed")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    try:
        run(spec)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
