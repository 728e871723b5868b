"""The student's base model and tokenizer: a Hugging Face model from a path or hub id, or a tiny
Llama-architecture model built from `TinyModelSpec` with a BPE tokenizer trained locally.

`prepare_base_student` writes the round-0 checkpoint; every later round starts from a folder
(or `source.json`) written here or by training.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from lion_core.config import LionConfig, TinyModelSpec
from lion_core.errors import ConfigError, LionError, ModelLoadError
from lion_core.ops.supervise import quiet_deepspeed_logger
from lion_core.run import layout
from lion_core.run.store import RunStore
from lion_core.student.checkpoints import (
    SOURCE,
    is_complete,
    mark_complete,
    resolve_model,
    scratch_for,
)

log = logging.getLogger(__name__)
quiet_deepspeed_logger()  # saving and loading models imports DeepSpeed, which talks
hf_logging.disable_progress_bar()  # no "Loading weights" / "Writing model shards" bars

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

# A minimal chat template for the tiny tokenizer, so `prompt_template: chat_template` works
# with tiny students too (real models bring their own).
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% else %}<|system|>\n{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


# ------------------------------------------------------------------------------------------
# Tiny model from config
# ------------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, split_digits: bool = False):
    """A byte-level BPE tokenizer trained on `texts`, wrapped for transformers.

    `split_digits`: every digit is its own token (numbers are never merged), as in Llama's
    tokenizer, so a number's digits are visible to the model one by one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lion_core.student.data import template_texts

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # the fixed template text is in every example: weight it so it compresses well
    corpus = [t for t in texts if t] + template_texts() * 50
    tok.train_from_iterator(corpus, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=1 << 30,
    )
    hf.chat_template = TINY_CHAT_TEMPLATE
    return hf


def llama_config(spec: TinyModelSpec, tokenizer, **overrides):
    """A LlamaConfig for `spec`, with the tokenizer's vocabulary and special tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads or spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **overrides,
    )


def build_tiny(spec: TinyModelSpec, tokenizer, *, seed: int = 0, attn_implementation="sdpa"):
    """A freshly initialised Llama-architecture model for `spec` (fp32, on the CPU)."""
    from transformers import LlamaForCausalLM

    config = llama_config(spec, tokenizer)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


def load_tokenizer(source: str, *, revision: str | None = None, trust_remote_code=False):
    """The tokenizer of a model folder or hub id, with a pad token (EOS if it has none)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"student.model: cannot load a tokenizer from {source!r}: {exc}") from exc
    except LionError:
        raise
    except Exception as exc:  # a malformed tokenizer.json: KeyError, tokenizers' own Exception
        raise ModelLoadError(
            f"{source}: cannot load the tokenizer ({type(exc).__name__}: {exc}); its files "
            "(tokenizer.json, tokenizer_config.json) are damaged or not a tokenizer's"
        ) from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    source: str,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
):
    """A causal LM from a model folder or hub id."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            attn_implementation=attn_implementation,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"student.model: cannot load a model from {source!r}: {exc}") from exc
    except LionError:
        raise
    except Exception as exc:  # SafetensorError, size mismatches (RuntimeError), ...
        raise _load_error(source, exc) from exc
    model.config.use_cache = True  # generation needs the KV cache; training turns it off
    if device is not None:
        model.to(device)
    return model


def _load_error(source: str, exc: Exception) -> ModelLoadError:
    """What failed loading the model folder `source`: the damaged weight file if one does not
    open, else the error as it came."""
    damaged = []
    if Path(source).is_dir():
        from safetensors import safe_open

        for path in sorted(Path(source).glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except Exception as err:
                damaged.append(f"{path} ({err})")
    if damaged:
        return ModelLoadError(f"{source}: cannot load the model: damaged {'; '.join(damaged)}")
    return ModelLoadError(f"{source}: cannot load the model ({type(exc).__name__}: {exc})")


def load_student(uri: str, cfg: LionConfig, *, dtype=torch.float32, device=None):
    """(model, tokenizer) of the student folder `uri` (local path or s3:// URI)."""
    source, revision = resolve_model(uri, cfg.storage.options)
    tok = load_tokenizer(source, revision=revision, trust_remote_code=cfg.student.trust_remote_code)
    model = load_model(
        source,
        dtype=dtype,
        attn_implementation=cfg.student.attn_implementation,
        revision=revision,
        trust_remote_code=cfg.student.trust_remote_code,
        device=device,
    )
    return model, tok


# ------------------------------------------------------------------------------------------
# Round 0
# ------------------------------------------------------------------------------------------


def prepare_base_student(cfg: LionConfig, store: RunStore, texts: list[str]) -> str:
    """Write the round-0 student to `round=0/student/` and return its URI.

    Tiny (cfg.student.tiny): a BPE tokenizer trained on `texts` (the pool's instructions and
    answers) and a freshly initialised Llama model, both saved with `save_pretrained`.
    A path or hub id (cfg.student.model): recorded in `source.json`, not copied, so a 7B model
    is not duplicated into every run; training and generation load it from there.
    Idempotent: a committed round-0 student (its `_COMPLETE` marker) is returned as is.
    """
    storage = store.storage
    rel = layout.student(0)
    if is_complete(storage, rel):
        return storage.uri(rel)
    if storage.exists(rel):
        storage.delete(rel, recursive=True)  # a half-written attempt: never trusted
    spec = cfg.student.tiny
    if spec is None:
        model = cfg.student.model
        local = Path(model).expanduser()
        if local.is_dir():
            model = str(local.resolve())
        storage.write_json(
            f"{rel}/{SOURCE}", {"model": model, "revision": cfg.student.revision}, overwrite=True
        )
        mark_complete(storage, rel, {"source": model})
        log.info("round-0 student: %s (recorded, not copied)", model)
        return storage.uri(rel)

    if not texts:
        raise ConfigError("student.tiny: no texts to train the tokenizer on")
    tok = train_tokenizer(texts, spec.vocab_size, split_digits=spec.split_digits)
    model = build_tiny(spec, tok, seed=cfg.seed)
    scratch = scratch_for(storage.uri(rel), "build")
    shutil.rmtree(scratch, ignore_errors=True)
    with storage.local_dir(rel, scratch) as out:
        model.save_pretrained(out)
        tok.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    mark_complete(storage, rel, {"source": "tiny", "parameters": n_params, "vocab": len(tok)})
    if not storage.is_local:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("round-0 student: tiny Llama, %d parameters, vocabulary %d", n_params, len(tok))
    return storage.uri(rel)


def for_training(model):
    """Set a model up for (packed) training.

    transformers builds a KV cache in the forward pass when `use_cache` is on (the default of
    most configs, also in train mode), and with a cache it no longer reads packed-sequence
    boundaries from `position_ids` when it builds the sdpa/eager attention mask: packed
    examples would attend to each other. Training needs no cache, so it is switched off.
    """
    model.config.use_cache = False
    return model
