"""BERT text conditioner (Devlin et al. 2019), trained jointly with the U-Net as LDM's text-to-image model was.

Rombach et al. 2022 (Sec. 4.3.1) condition on LAION captions with a BERT-tokenizer transformer learned from
scratch together with the U-Net. The tokens are the last hidden state of a small transformers `BertModel`
(no pooler: only the sequence is used); the mask is the tokenizer's attention mask.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self

from transformers import BertConfig, BertModel

from components.conditioners.base import TextConditioner
from components.conditioners.clip import check_heads
from components.conditioners.tokenizer import build_tokenizer
from components.registry import CONDITIONERS


class BERTConditioner(TextConditioner):
    """A transformers BertModel (no pooler) + a WordPiece tokenizer; tokens of width `hidden_size`."""

    model_class = BertModel
    model_kwargs = {"add_pooling_layer": False}

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
        """A small randomly initialised BERT with a WordPiece tokenizer built from `texts` (our captions)."""
        check_heads(hidden_size, num_heads)
        tokenizer = build_tokenizer(texts, kind="wordpiece", vocab_size=vocab_size, max_length=max_length)
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=mlp_ratio * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            max_position_embeddings=max_length,
            pad_token_id=tokenizer.pad_token_id,
        )
        return cls(BertModel(config, add_pooling_layer=False), tokenizer).eval()  # train() before training


@CONDITIONERS.register(
    "bert", tiny={"hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_length": 16, "vocab_size": 200}
)
def bert(texts: Iterable[str] | None = None, **config: int) -> BERTConditioner:
    """BERT text tokens, trained with the U-Net (LDM), cross-attention; tokenizer from texts or CAPTION_VOCABULARY."""
    return BERTConditioner.from_config(texts, **config)
