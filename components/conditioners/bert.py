"""BERT text conditioner (Devlin et al. 2019), trained jointly with the U-Net as LDM's text-to-image model was.

Rombach et al. 2022 (Sec. 4.3.1) condition on LAION captions with a BERT-tokenizer transformer learned from
scratch together with the U-Net. The tokens are the last hidden state of a small transformers `BertModel`
(no pooler: only the sequence is used); the mask is the tokenizer's attention mask.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import BertConfig, BertModel

from components.conditioners.base import TextConditioner
from components.registry import CONDITIONERS
from components.validation import MAX_CLASSES


class BERTConditioner(TextConditioner):
    """A transformers BertModel (no pooler) + a WordPiece tokenizer; tokens of width `hidden_size`."""

    model_class = BertModel
    config_class = BertConfig
    model_kwargs = {"add_pooling_layer": False}
    tokenizer_kind = "wordpiece"
    extra_fields = {"type_vocab_size": (1, MAX_CLASSES)}


@CONDITIONERS.register(
    "bert", tiny={"hidden_size": 16, "num_layers": 1, "num_heads": 2, "max_length": 16, "vocab_size": 200}
)
def bert(texts: Iterable[str] | None = None, **config: int) -> BERTConditioner:
    """BERT text tokens, trained with the U-Net (LDM), cross-attention; tokenizer from texts or CAPTION_VOCABULARY."""
    return BERTConditioner.from_config(texts, **config)
