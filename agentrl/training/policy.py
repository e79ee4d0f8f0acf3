"""The policy being trained: model, tokenizer, DeepSpeed engine, optional reference, inference engine.

:func:`build_policy` loads the model (the offline default, a folder, a run's checkpoint), adds LoRA
or a frozen reference for the KL term, and wraps it in DeepSpeed with AdamW, the LR schedule and the
ZeRO recipe from ``configs/deepspeed/``. Shared by ``train`` and ``sft``.

May import: checkpoint, metrics, logger, curriculum, distributed (in agentrl.training), and config,
algorithms, replay, rollout, envs, models, suggest, seeds (lint-imports checks).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl.config import Config, ConfigError, configs_dir
from agentrl.models import load_model, load_tokenizer, resolve_model_path
from agentrl.rollout.engines import Engine, EngineSetup, start_engine
from agentrl.training.checkpoint import saved_optimizer_state


@dataclass
class Policy:
    """Everything the loop holds about the model being trained."""

    model: torch.nn.Module
    """The HF (or peft) module; the DeepSpeed engine wraps it and the hf engine samples from it."""
    ds_engine: Any
    tokenizer: Any
    reference: torch.nn.Module | None
    """Frozen reference for the KL term (``None`` when the KL is off or LoRA provides it)."""
    device: torch.device
    model_path: str
    """The starting model's folder on disk (what an engine with its own weights loads)."""
    autocast: torch.dtype | None = None
    """The dtype the trainer's forward and backward passes run in under ``torch.autocast`` (``None``:
    the model's own dtype); see :func:`autocast_for`."""
    split: tuple[torch.nn.Module, torch.nn.Module] | None = None
    """The model's transformer body and output head, where its logits are exactly ``head(body(x))``
    (:func:`split_lm`): the trainer then computes logits only at the positions it trains on."""

    def precision(self) -> contextlib.AbstractContextManager:
        """The context of every trainer forward pass: autocast to ``self.autocast``, or nothing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def logits_at(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor
    ):
        """Logits (N, V) of the positions where ``keep`` (B, L-1) is true, in row-major order;
        position ``t`` predicts token ``t+1``.

        ``model`` is the DeepSpeed engine, the reference model or the module with its adapters off.
        Only the kept rows go through the output head: in an agent's episode most positions are
        prompt and observation tokens, and a (B, L, V) logits tensor is the update's largest.
        """
        split = self.split
        if split is not None and model is self.reference:  # the same architecture: split it alike
            split = split_lm(model, check=False)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        if split is None:
            return model(**inputs).logits[:, :-1][keep]
        body, head = split
        hidden = body(**inputs).last_hidden_state[:, :-1]  # (B, L-1, H)
        return head(hidden[keep])  # (N, V)


def quiet_libraries() -> None:
    """Keep the console for agentrl's progress bar: no per-save progress bars or INFO chatter."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def device_for(cfg: Config) -> torch.device:
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    return torch.device(cfg.train.device)


def dtype_for(cfg: Config, device: torch.device) -> str:
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "bfloat16" if device.type == "cuda" else "float32"


def split_lm(model: torch.nn.Module, check: bool = True) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """A causal LM's body and output head, if its logits are ``head(body(x).last_hidden_state)``.

    With ``check`` the identity is verified on a short probe: a model that scales or soft-caps its
    logits after the head (Gemma 2's soft-capping, say) gives ``None`` and keeps its own forward.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    body = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(body, torch.nn.Module) or not isinstance(head, torch.nn.Module):
        return None
    if check:
        device = next(model.parameters()).device
        ids = torch.arange(1, 17, device=device)[None]
        with torch.no_grad():
            full = model(input_ids=ids, use_cache=False).logits.float()
            split = head(body(input_ids=ids, use_cache=False).last_hidden_state).float()
        if full.shape != split.shape or not torch.allclose(full, split, atol=1e-4, rtol=1e-4):
            return None
    return body, head


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    return any(
        getattr(cpu, probe, lambda: False)()
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


def autocast_for(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The trainer's autocast dtype (``train.autocast``): ``auto`` is bfloat16 for a float32 model
    on a CPU with bf16 instructions, where it nearly halves the update's time, and off elsewhere."""
    if cfg.train.autocast == "off" or dtype_for(cfg, device) != "float32":
        return None
    if cfg.train.autocast == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def engine_dtype_for(cfg: Config, device: torch.device) -> str:
    """The dtype an engine with its own weights samples in (``engine.dtype``; ``auto``: the one the
    trainer computes in, so bfloat16 under the update's bf16 autocast, else the model's dtype).

    A bfloat16 engine decodes about 1.9x faster on vLLM's CPU build, and on the tokens it samples
    its log-probs agree with the autocast trainer's to ~1e-3 nats (docs/engines.md, "Dtype")."""
    if cfg.engine.dtype != "auto":
        return cfg.engine.dtype
    autocast = autocast_for(cfg, device)
    return "bfloat16" if autocast is torch.bfloat16 else dtype_for(cfg, device)


def release_memory() -> None:
    """Give the memory freed by the phase that just ended back to the OS (between rollout, update,
    evaluation, and from the warm start to RL).

    CPU tensors come from malloc, and glibc keeps freed chunks below its mmap threshold in its
    arenas: after a 4096-token update the process held ~6 GB it no longer used, which the next
    phase's allocations (vLLM's, from other threads' arenas) added to instead of reusing.
    ``malloc_trim`` returns them; elsewhere than glibc this only collects garbage."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_policy(cfg: Config, device: torch.device) -> Policy:
    import deepspeed

    path = resolve_model_path(cfg.run.init or cfg.model.path)
    dtype = dtype_for(cfg, device)
    tokenizer = load_tokenizer(path)
    model = load_model(path, dtype=dtype, device=str(device))
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    reference = None
    if cfg.model.lora.r > 0:
        from peft import LoraConfig, get_peft_model

        lora = cfg.model.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
            ),
        )
    elif cfg.algo.kl.enabled:
        # The reference is the *initial* model (also on resume), frozen.
        reference = load_model(path, dtype=dtype, device=str(device)).eval().requires_grad_(False)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if carries_optimizer_state(cfg):
        carry_optimizer_moments(optimizer, params, path)
    elif _wants_optimizer_state(cfg):  # asked for, but the stage shards the optimizer
        print(
            f"agentrl: train.init_optimizer_state: ZeRO-{cfg.train.zero_stage} shards the optimizer, "
            "so AdamW starts from zero"
        )
    total = cfg.train.steps * cfg.algo.ppo_epochs * cfg.algo.mini_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total))
    ds_engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=_deepspeed_config(cfg, dtype)
    )
    if torch.distributed.get_world_size() == 1 and cfg.train.zero_stage == 0:
        # Alone there is nothing to average: skip DeepSpeed's flatten-and-copy of every gradient.
        ds_engine.enable_backward_allreduce = False
    return Policy(
        model=model,
        ds_engine=ds_engine,
        tokenizer=tokenizer,
        reference=reference,
        device=device,
        model_path=path,
        autocast=autocast_for(cfg, device),
        split=split_lm(model),
    )


def carries_optimizer_state(cfg: Config) -> bool:
    """Whether this run starts AdamW from the ``run.init`` checkpoint's moments: asked for, with a
    checkpoint to start from, and ZeRO-0 (higher stages shard the optimizer)."""
    return _wants_optimizer_state(cfg) and cfg.train.zero_stage == 0


def _wants_optimizer_state(cfg: Config) -> bool:
    """``train.init_optimizer_state`` with a ``run.init`` checkpoint to carry the moments from."""
    return bool(cfg.train.init_optimizer_state and cfg.run.init)


_START_FROM_ZERO = "set train.init_optimizer_state=false to start AdamW from zero"


def no_optimizer_state(source: str) -> ConfigError:
    """The error of ``train.init_optimizer_state`` with nothing to carry beside ``source``."""
    return ConfigError(
        f"train.init_optimizer_state: {source} has no single-process optimizer state to start from "
        f"(a run folder or checkpoint trained with train.zero_stage=0 has one); {_START_FROM_ZERO}"
    )


def carry_optimizer_moments(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor], model_dir: str
) -> None:
    """Start ``optimizer`` from the AdamW state saved beside ``model_dir``: its second moments and
    step counts, with the first moments at zero; its own hyperparameters (lr, betas, weight decay)
    stay this run's. Raises :class:`ConfigError` where there is no state to carry or it belongs to
    another model.

    The second moments say how large each weight's gradients ran in the run saved, so an update
    moves a weight by how its new gradient compares with those. The first moments are left behind:
    they are the momentum of that run's last batches, and with beta1 = 0.9 they would go on moving
    the weights along those batches' gradients for the next ten steps or so, whatever the new
    gradients say (from the Sokoban recipe's warm start, four AdamW steps at RL's lr with zero
    gradient lose 8 of its 105 held-out rooms and gain none: ``scripts/momentum_drift.py``). The
    restarted first moment keeps the carried step count's bias correction, so the first steps are
    small and grow as the new momentum builds (0.1, 0.19, 0.27... of a fresh moment's); a fresh
    moment's own correction, ten times the step at first, eroded the warm start (README)."""
    saved = saved_optimizer_state(model_dir)
    if saved is None:
        raise no_optimizer_state(model_dir)
    state = saved["state"]
    for i, p in enumerate(params):
        moments = state.get(i)
        if moments is None or tuple(moments["exp_avg"].shape) != tuple(p.shape):
            raise ConfigError(
                f"train.init_optimizer_state: the optimizer state beside {model_dir} is of another model "
                f"or trainable set (parameter {i}: {tuple(p.shape)}); {_START_FROM_ZERO}"
            )
    # Copies: the saved tensors are mapped from the checkpoint file, which a later save may delete.
    carried = {
        i: {
            "step": m["step"].clone() if torch.is_tensor(m["step"]) else m["step"],
            "exp_avg": torch.zeros_like(m["exp_avg"]),
            "exp_avg_sq": m["exp_avg_sq"].clone(),
        }
        for i, m in state.items()
    }
    optimizer.load_state_dict({"state": carried, "param_groups": optimizer.state_dict()["param_groups"]})


def _lr_lambda(cfg: Config, total_updates: int):
    warmup, schedule = cfg.train.warmup_steps, cfg.train.lr_schedule

    def factor(update: int) -> float:
        if warmup and update < warmup:
            return (update + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (update - warmup) / max(1, total_updates - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress))
        return 1.0

    return factor


def _deepspeed_config(cfg: Config, dtype: str) -> dict[str, Any]:
    """The ZeRO recipe from configs/deepspeed/ (or the user's file), with the fields agentrl owns set."""
    import json

    path = cfg.train.deepspeed_config or configs_dir() / "deepspeed" / f"zero{cfg.train.zero_stage}.json"
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} not found; set train.deepspeed_config to a JSON file")
    ds = json.loads(path.read_text())
    # agentrl accumulates micro-batches itself (by tokens) and marks the boundary explicitly.
    ds["train_micro_batch_size_per_gpu"] = 1
    ds["gradient_accumulation_steps"] = 1
    ds["gradient_clipping"] = cfg.train.grad_clip
    ds["bf16"] = {"enabled": dtype == "bfloat16"}
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def engine_setup(
    cfg: Config,
    model_path: str,
    pad_token_id: int,
    device: torch.device,
    model: torch.nn.Module | None = None,
) -> EngineSetup:
    """What the configured engine needs to start for this run (see :class:`EngineSetup`)."""
    return EngineSetup(
        model_path=model_path,
        pad_token_id=pad_token_id,
        dtype=engine_dtype_for(cfg, device),
        seed=cfg.train.seed,
        max_context_tokens=cfg.rollout.max_context_tokens,
        # A step's episodes and an evaluation's are generated together (one turn of all at once).
        max_sequences=max(cfg.episodes_per_step, cfg.eval.episodes * cfg.eval.samples_per_seed),
        model=model,
        device=str(device),
        lora=cfg.model.lora.r > 0,
    )


def engine_options(cfg: Config) -> dict[str, dict[str, Any]]:
    """Each engine's keyword arguments from the config (``engine.name`` picks which one is used)."""
    return {"hf": {"max_batch_size": cfg.engine.max_batch_size}, "vllm": dict(cfg.engine.vllm)}


def build_engine(cfg: Config, policy: Policy) -> tuple[Engine, str]:
    """The rollout engine of a run, by ``engine.name``; with a line saying which one and why."""
    setup = engine_setup(
        cfg, policy.model_path, policy.tokenizer.pad_token_id, policy.device, model=policy.model
    )
    return start_engine(cfg.engine.name, setup, engine_options(cfg))
