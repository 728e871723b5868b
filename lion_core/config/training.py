"""Fine-tuning the student: hyperparameters, DeepSpeed ZeRO, LoRA, launch and checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lion_core.config.base import OPERATIONAL, Section


class LoraSpec(Section):
    """LoRA adapters through peft."""

    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Adapter scaling.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Adapter dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.",
    )


class TrainingConfig(Section):
    """Fine-tuning the student on the teacher's answers (loss on response tokens only)."""

    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (paper: 2e-5).")
    epochs: float = Field(3.0, gt=0, description="Passes over the train pool (paper: 3).")
    max_length: int = Field(1024, ge=16, description="Tokens per example; longer are truncated.")
    micro_batch_size: int = Field(
        4,
        ge=1,
        description="Examples per GPU per step with padding; with packing, the token "
        "budget per step is micro_batch_size * max_length.",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps per optimizer update.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name.")
    packing: bool = Field(
        True,
        description="Pack examples into padding-free batches; attention never crosses an "
        "example's boundary. Off: pad each batch to its longest example.",
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    offload_optimizer: bool = Field(False, description="ZeRO: keep optimizer state on the CPU.")
    offload_param: bool = Field(False, description="ZeRO-3: keep parameters on the CPU.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    launcher: Literal["deepspeed", "python"] = Field(
        "deepspeed",
        description="'deepspeed': the deepspeed launcher (several GPUs/nodes); 'python': one "
        "plain process without DeepSpeed.",
        json_schema_extra=OPERATIONAL,
    )
    num_gpus: int | None = Field(
        None,
        ge=1,
        description="GPUs (or CPU ranks with no GPU) per node; empty = all visible.",
        json_schema_extra=OPERATIONAL,
    )
    num_nodes: int = Field(
        1, ge=1, description="Nodes to train on (needs hostfile).", json_schema_extra=OPERATIONAL
    )
    hostfile: str | None = Field(
        None, description="DeepSpeed hostfile for several nodes.", json_schema_extra=OPERATIONAL
    )
    master_port: int | None = Field(
        None, ge=1024, le=65535, description="Rendezvous port.", json_schema_extra=OPERATIONAL
    )
    init_from: Literal["base", "previous"] = Field(
        "base",
        description="'base': retrain from the base model on the whole train pool each round; "
        "'previous': continue from the last round's student.",
    )
    save_steps: int = Field(200, ge=1, description="Checkpoint every N optimizer steps.")
    keep_checkpoints: bool = Field(
        False,
        description="Keep the round's last training checkpoint (weights and optimizer state, "
        "for resuming that training) once its student is committed. Off: the round's "
        "checkpoints are deleted then (a 7B student's are ~100 GB a round).",
        json_schema_extra=OPERATIONAL,
    )
    logging_steps: int = Field(10, ge=1, description="Log the loss every N steps.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Where the Trainer also logs the loss and learning rate every "
        "logging_steps: tensorboard (event files in round=<k>/tensorboard of the run's "
        "storage; needs the tensorboard package), wandb, mlflow (configured by their own "
        "environment variables, e.g. WANDB_PROJECT, MLFLOW_TRACKING_URI). Empty: nowhere.",
        json_schema_extra=OPERATIONAL,
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after N steps (overrides epochs).")
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters instead of all weights.")
    timeout: float | None = Field(
        None, gt=0, description="Seconds before training is killed.", json_schema_extra=OPERATIONAL
    )
