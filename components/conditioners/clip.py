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
from components.registry import CONDITIONERS


class CLIPTextConditioner(TextConditioner):
    """A transformers CLIPTextModel + its tokenizer; tokens of width `hidden_size`."""

    model_class = CLIPTextModel
    config_class = CLIPTextConfig
    tokenizer_kind = "bpe"
    token_fields = ("pad_token_id", "bos_token_id", "eos_token_id")

    @classmethod
    def special_tokens(cls, tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
        # eos not 2, so pooling finds the first [EOS] (not the argmax of the ids)
        return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}

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


@CONDITIONERS.register(
    "clip", tiny={"hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_length": 16, "vocab_size": 200}
)
def clip(texts: Iterable[str] | None = None, **config: int) -> CLIPTextConditioner:
    """CLIP text tokens (final-layer-normed states), cross-attention; tokenizer from texts or CAPTION_VOCABULARY."""
    return CLIPTextConditioner.from_config(texts, **config)
