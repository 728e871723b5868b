"""The DeepSpeed configuration, generated from `LionConfig.training`.

Values marked "auto" are filled in by the transformers Trainer from its arguments (batch sizes,
learning rate, clipping), so the numbers live in one place: `TrainingConfig`. The reference files
in infra/deepspeed/ are this function's output for the usual settings (a test keeps them equal).
"""

from __future__ import annotations

from typing import Any

from lion_core.config import TrainingConfig
from lion_core.errors import ConfigError


def deepspeed_config(training: TrainingConfig, *, bf16: bool) -> dict[str, Any]:
    """ZeRO stage, offload and precision from `training`; bf16 on GPU, fp32 on CPU."""
    stage = training.zero_stage
    if training.offload_param and stage != 3:
        raise ConfigError("training.offload_param needs training.zero_stage: 3")
    if training.offload_optimizer and stage == 0:
        raise ConfigError("training.offload_optimizer needs training.zero_stage 1, 2 or 3")
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": stage > 0,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                "sub_group_size": 1_000_000_000,
                # the final model is gathered from all ranks and saved whole (16-bit on GPU)
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if training.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if training.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,  # the Trainer logs; DeepSpeed's own prints are noise
        "wall_clock_breakdown": False,
    }
    if training.offload_optimizer:
        # ZeRO-Offload needs DeepSpeed's CPU Adam; the Trainer keeps its own LR scheduler.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config
