"""The conditioner contract, and the text-encoder machinery CLIP and BERT share.

A conditioner is an `nn.Module` with a `mode` (LDM, Rombach et al. 2022, Fig. 3: the conditioning switch):
- "crossattn": `forward(inputs: list) -> (tokens (B, L, D) float, mask (B, L) bool, True = real token)`,
  `dim` (D, the U-Net's context width), `empty_input()` (the input meaning "no condition", for
  classifier-free guidance), `unknown_words(texts) -> list[list[str]]` (empty lists for non-text inputs).
- "concat": `forward(maps) -> (B, channels, h, w)` at the latent grid, `channels`, `empty_input()`.
Every conditioner has a `kind`, what it takes: "text" (prompts: CLIP, BERT), "class" (integer labels) or "map"
(semantic maps); code that must know what a conditioner takes tests `kind`, never `hasattr`. Every conditioner
has `save_pretrained(folder)` and `from_pretrained(folder_or_repo_id)`, and returns its
outputs on the device (and in the dtype) of its parameters.

Text conditioners pad every prompt to `max_length` tokens (so conditional and unconditional batches
concatenate for CFG) and truncate longer prompts to it: `was_truncated(texts)` says which were cut, and
`forward` logs a warning naming them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from components import storage
from components.base import WeightsError, read_json_object
from components.conditioners import tokenizer as tok
from components.validation import (
    MAX_CHANNEL_MULT,
    MAX_CHANNELS,
    MAX_DEPTH,
    MAX_PARAMETERS,
    MAX_TOKENS,
    MAX_VOCAB,
    require_choice,
    require_int,
    require_number,
    require_text,
)

logger = logging.getLogger(__name__)

MODES = ("crossattn", "concat")
# What a local folder must hold: one file of each group (the first is named when none is there).
REQUIRED = {
    "model config": ("config.json",),
    "model weights (safetensors only)": ("model.safetensors", "model.safetensors.index.json"),
    "tokenizer": ("tokenizer.json", "vocab.json", "vocab.txt"),
}


def check_batch(inputs: Any, what: str) -> list:
    """A non-empty list (or tuple) of inputs, one per batch element."""
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"pass a list of {what}, one per batch element (e.g. [x]), got {type(inputs).__name__}")
    if len(inputs) == 0:
        raise ValueError(f"empty batch: pass at least one of {what}")
    return list(inputs)


def check_texts(texts: Any) -> list[str]:
    texts = check_batch(texts, "strings")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"a text conditioner takes strings; got {', '.join(sorted(set(bad)))} in the batch")
    return [require_text(f"texts[{i}]", t) for i, t in enumerate(texts)]


# A transformers text config's fields that shape the network or its numerics, each with its bounds (min, max).
# transformers fills a missing one with its default, so a config.json without one would load a different model.
TEXT_CONFIG_BOUNDS: dict[str, tuple[int, int]] = {
    "vocab_size": (1, MAX_VOCAB),
    "hidden_size": (1, MAX_CHANNELS),
    "intermediate_size": (1, MAX_CHANNELS * MAX_CHANNEL_MULT),
    "num_hidden_layers": (1, MAX_DEPTH),
    "num_attention_heads": (1, MAX_CHANNELS),
    "max_position_embeddings": (1, MAX_TOKENS),
}


class TextConditioner(nn.Module):
    """A transformers text encoder + its tokenizer; subclasses set `model_class` (and may override `encode`)."""

    mode = "crossattn"
    kind = "text"  # what it takes: "text" (prompts), "class" (labels), "map" (semantic maps); test this, not hasattr
    model_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type[PretrainedConfig]]  # the transformers config of `model_class`
    model_kwargs: ClassVar[dict[str, Any]] = {}  # extra arguments for `model_class` and its from_pretrained
    tokenizer_kind: ClassVar[str]  # "bpe" or "wordpiece" (components/conditioners/tokenizer.py)
    token_fields: ClassVar[tuple[str, ...]] = ("pad_token_id",)  # config fields holding a token id (or null)
    extra_fields: ClassVar[dict[str, tuple[int, int]]] = {}  # a model's own sized fields beyond TEXT_CONFIG_BOUNDS

    @classmethod
    def from_config(
        cls,
        texts: Iterable[str] | None = None,
        *,
        hidden_size: int = 128,
        num_layers: int = 3,
        num_heads: int = 4,
        max_length: int = 32,
        vocab_size: int = 1000,
        mlp_ratio: int = 4,
    ) -> Self:
        """A small randomly initialised text model with a tokenizer of `tokenizer_kind` built from `texts` (our
        captions by default); in eval mode (call train() before training: dropout is then on)."""
        require_int("num_layers", num_layers, minimum=1, maximum=MAX_DEPTH, why="CLIP-L has 12")
        require_int("mlp_ratio", mlp_ratio, minimum=1, maximum=MAX_CHANNEL_MULT)
        hidden_size = require_int("hidden_size", hidden_size, minimum=1, maximum=MAX_CHANNELS, why="CLIP-G's is 1280")
        if hidden_size % require_int("num_heads", num_heads, minimum=1, maximum=hidden_size):
            raise ValueError(f"hidden_size ({hidden_size}) must be a positive multiple of num_heads ({num_heads})")
        tokenizer = tok.build_tokenizer(texts, kind=cls.tokenizer_kind, vocab_size=vocab_size, max_length=max_length)
        config = cls.config_class(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=mlp_ratio * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            max_position_embeddings=max_length,
            pad_token_id=tokenizer.pad_token_id,
            **cls.special_tokens(tokenizer),
        )
        return cls(cls.model_class(config, **cls.model_kwargs), tokenizer).eval()

    @classmethod
    def check_config(cls, path: Path) -> None:
        """The text model's config.json, checked before transformers reads it (check_text_config)."""
        check_text_config(cls, path)

    @classmethod
    def special_tokens(cls, tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
        """Token ids the model's config needs beyond padding (none by default)."""
        return {}

    def __init__(self, text_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        if not isinstance(text_model, self.model_class):
            wanted, got = self.model_class.__name__, type(text_model).__name__
            raise TypeError(f"{type(self).__name__} needs a {wanted}, got {got}")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer ({type(tokenizer).__name__}) has no pad token: prompts cannot be batched")
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.max_length = min(tokenizer.model_max_length, text_model.config.max_position_embeddings)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) and mask (B, L) -> the last hidden state (B, L, dim), padding masked out of attention
        (CLIP's is final-layer-normed, as Stable Diffusion uses it)."""
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @property
    def dim(self) -> int:
        return self.text_model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.text_model.parameters()).device

    @property
    def frozen(self) -> bool:
        """True when no parameter of the text model requires a gradient."""
        return not any(p.requires_grad for p in self.text_model.parameters())

    def empty_input(self) -> str:
        """The empty prompt: the unconditional input of classifier-free guidance."""
        return ""

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, max_length, dim) and mask (B, max_length), True on real tokens (specials included)."""
        texts = check_texts(texts)
        cut = [t for t, was_cut in zip(texts, self.was_truncated(texts), strict=True) if was_cut]
        if cut:
            logger.warning("%d prompt(s) truncated to %d tokens: %s", len(cut), self.max_length, cut)
        batch = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        input_ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        return self.encode(input_ids, mask), mask.bool()

    def was_truncated(self, texts: list[str]) -> list[bool]:
        """Per text: True when it has more than max_length tokens, so forward cuts it."""
        return [n > self.max_length for n in tok.token_counts(self.tokenizer, check_texts(texts))]

    def unknown_words(self, texts: list[str]) -> list[list[str]]:
        """Per text, the words the tokenizer does not know (definition: components/conditioners/tokenizer.py)."""
        return tok.unknown_words(self.tokenizer, check_texts(texts))

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Hub layout: the model's config.json + model.safetensors and the tokenizer's files, in one folder."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.text_model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike,
        *,
        subfolder: str | None = None,
        tokenizer_subfolder: str | None = None,
        **hub_kwargs: Any,
    ) -> Self:
        """A folder or Hub id in transformers layout, or a diffusers pipeline's text_encoder/ + tokenizer/.

        For a local folder the diffusers layout is detected; for a Hub id of a diffusers pipeline pass
        subfolder="text_encoder" (the tokenizer subfolder then defaults to "tokenizer"). Safetensors only.
        """
        subfolder, tokenizer_subfolder = layout(path_or_repo, subfolder, tokenizer_subfolder)
        if Path(path_or_repo).is_dir():
            cls.check_config(Path(path_or_repo, subfolder, "config.json"))
        weights = Path(path_or_repo, subfolder, "model.safetensors")
        try:
            if weights.is_file() and storage.is_int8(weights):  # the embedded zoo's int8 storage
                text_model = cls.model_class(cls.config_class.from_pretrained(weights.parent), **cls.model_kwargs)
                text_model.load_state_dict(storage.read(weights), strict=True)
            else:
                text_model = cls.model_class.from_pretrained(
                    path_or_repo, subfolder=subfolder, use_safetensors=True, **cls.model_kwargs, **hub_kwargs
                )
            tokenizer = AutoTokenizer.from_pretrained(path_or_repo, subfolder=tokenizer_subfolder, **hub_kwargs)
        except SafetensorError as err:  # a corrupt weights file: name it
            raise WeightsError(f"cannot load a {cls.__name__}: {weights} is not valid safetensors: {err}") from err
        except (OSError, ValueError, RuntimeError) as err:  # RuntimeError: weights that do not fit the config
            raise WeightsError(f"cannot load a {cls.__name__} from {path_or_repo}: {err}") from err
        return cls(text_model, tokenizer).eval()


def check_text_config(cls: type[TextConditioner], path: Path) -> None:
    """A text encoder's config.json checked before transformers reads it: its model_type, every field that shapes
    the network present (transformers would take its default) and within bounds, the parameters it implies
    bounded; each defect a WeightsError naming the file and the field."""
    data = read_json_object(path)
    bounds = {**TEXT_CONFIG_BOUNDS, **cls.extra_fields}
    required = [*bounds, *cls.token_fields, "hidden_act", "layer_norm_eps", "model_type"]
    missing = [name for name in required if name not in data]
    if missing:
        raise WeightsError(
            f"{path} misses fields {missing} of {cls.config_class.__name__} (transformers would silently take "
            "their defaults, a model other than the one saved)"
        )
    try:
        require_choice(f"{path}: model_type", data["model_type"], [cls.config_class.model_type])
        sizes = {k: require_int(f"{path}: {k}", data[k], minimum=lo, maximum=hi) for k, (lo, hi) in bounds.items()}
        if sizes["hidden_size"] % sizes["num_attention_heads"]:
            heads = sizes["num_attention_heads"]
            raise ValueError(
                f"{path}: hidden_size ({sizes['hidden_size']}) must be a multiple of num_attention_heads ({heads})"
            )
        for name in cls.token_fields:
            if data[name] is not None:
                require_int(f"{path}: {name}", data[name], minimum=0, maximum=sizes["vocab_size"] - 1, why="a token")
        require_choice(f"{path}: hidden_act", data["hidden_act"], sorted(activations()))
        require_number(f"{path}: layer_norm_eps", data["layer_norm_eps"], minimum=1e-30, maximum=1.0)
        h, layers = sizes["hidden_size"], sizes["num_hidden_layers"]
        estimate = (sizes["vocab_size"] + sizes["max_position_embeddings"]) * h
        estimate += layers * (4 * h * h + 2 * h * sizes["intermediate_size"])  # attention q, k, v, out; the MLP
        require_int(f"{path}: the parameters its sizes imply", estimate, maximum=MAX_PARAMETERS)
    except (TypeError, ValueError) as err:
        raise WeightsError(str(err)) from err


def activations() -> list[str]:
    from transformers.activations import ACT2FN

    return list(ACT2FN)


def layout(path_or_repo: str | os.PathLike, subfolder: str | None, tokenizer_subfolder: str | None) -> tuple[str, str]:
    """(model subfolder, tokenizer subfolder); a local folder is checked, naming the first missing file."""
    local = Path(path_or_repo)
    if subfolder is None and local.is_dir() and not (local / "config.json").exists():
        subfolder = "text_encoder" if (local / "text_encoder").is_dir() else None
    if tokenizer_subfolder is None:
        tokenizer_subfolder = subfolder.replace("text_encoder", "tokenizer") if subfolder else subfolder
    if local.is_dir():
        for what, names in REQUIRED.items():
            require_one(local / ((tokenizer_subfolder if what == "tokenizer" else subfolder) or ""), names, what)
    elif str(path_or_repo).startswith((".", "/")) or local.exists():
        raise WeightsError(f"{local} is not a folder (expected a text encoder folder or a Hub repo id)")
    return subfolder or "", tokenizer_subfolder or ""


def require_one(folder: Path, names: tuple[str, ...], what: str) -> None:
    if not any((folder / name).is_file() for name in names):
        raise WeightsError(f"missing {folder / names[0]}: no {what} in {folder} (expected one of {', '.join(names)})")
