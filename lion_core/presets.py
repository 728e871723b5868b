"""Ready-made configurations. `demo_config` is the embedded default `lion demo` runs: the offline
task world plays all three roles, a tiny student is built from config, storage is a folder."""

from __future__ import annotations

from lion_core.config import LionConfig


def demo_config(root: str = "lion-runs/demo", rounds: int = 3) -> LionConfig:
    """Small enough for a 2-core laptop in minutes, with every stage doing real work."""
    return LionConfig().with_overrides(
        {
            "name": "lion-demo",
            "rounds": rounds,
            "storage.root": root,
            "pools.offline_seeds": 160,
            "pools.new_per_round": 80,
            "student.tiny": {
                "vocab_size": 512,
                "hidden_size": 128,
                "intermediate_size": 384,
                "num_layers": 2,
                "num_heads": 4,
                "max_position_embeddings": 256,
            },
            "student.generation.max_new_tokens": 32,
            "training.learning_rate": 1e-3,
            "training.epochs": 20,
            "training.max_length": 256,
            # Small batches: more optimizer steps for the same compute (a tiny student on CPU
            # learns per step, and the response is a few tokens of each example).
            "training.micro_batch_size": 4,
            # Each round continues from the last round's student (cumulative learning within
            # the demo's minutes) on the whole Train Pool.
            "training.init_from": "previous",
            "training.warmup_ratio": 0.05,
            "training.save_steps": 100,
            "training.num_gpus": 1,
            "training.logging_steps": 20,
            "referee.max_tokens": 256,
            "generator.oversample": 3.0,  # templated tasks: many candidates are not novel
            "evaluation.sets": ["offline"],  # the held-out set: no pool ever contains it
        }
    )
