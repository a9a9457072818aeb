"""CLIP text conditioner (Radford et al. 2021), as Stable Diffusion uses it (LDM, Rombach et al. 2022).

The tokens are the final-layer-normed last hidden state of the CLIP text transformer (transformers'
`CLIPTextModel.last_hidden_state`), one per position; the mask is the tokenizer's attention mask.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Self

from transformers import CLIPModel, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase

from components.conditioners.base import TextConditioner
from components.conditioners.tokenizer import build_tokenizer
from components.registry import CONDITIONERS


class CLIPTextConditioner(TextConditioner):
    """A transformers CLIPTextModel + its tokenizer; tokens of width `hidden_size`."""

    model_class = CLIPTextModel

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
        """A small randomly initialised CLIP text tower with a BPE tokenizer built from `texts` (our captions)."""
        check_heads(hidden_size, num_heads)
        tokenizer = build_tokenizer(texts, kind="bpe", vocab_size=vocab_size, max_length=max_length)
        config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=mlp_ratio * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            max_position_embeddings=max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,  # not 2, so pooling finds the first [EOS] (not argmax of ids)
        )
        return cls(CLIPTextModel(config), tokenizer).eval()  # train() before training: dropout is then on

    @classmethod
    def from_clip_model(
        cls, clip_model: CLIPModel, tokenizer: PreTrainedTokenizerBase, *, freeze: bool = True
    ) -> Self:
        """The text tower of a contrastively trained CLIPModel (a copy), frozen by default as in LDM / SD."""
        if not isinstance(clip_model, CLIPModel):
            raise TypeError(f"from_clip_model takes a transformers CLIPModel, got {type(clip_model).__name__}")
        text_model = copy.deepcopy(clip_model.text_model)
        if freeze:
            text_model.requires_grad_(False)
        return cls(text_model, tokenizer).eval()


def check_heads(hidden_size: int, num_heads: int) -> None:
    if hidden_size < 1 or num_heads < 1 or hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a positive multiple of num_heads ({num_heads})")


@CONDITIONERS.register(
    "clip", tiny={"hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_length": 16, "vocab_size": 200}
)
def clip(texts: Iterable[str] | None = None, **config: int) -> CLIPTextConditioner:
    """CLIP text tokens (final-layer-normed states), cross-attention; tokenizer from texts or CAPTION_VOCABULARY."""
    return CLIPTextConditioner.from_config(texts, **config)
