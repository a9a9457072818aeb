"""Class-label conditioner: one learned token per class, plus a null class for classifier-free guidance.

LDM (Rombach et al. 2022) conditions class-conditional ImageNet models on a learned class embedding through
cross-attention; Ho & Salimans 2022 train the unconditional model jointly by replacing the label with a
null label. Here the embedding table has num_classes + 1 rows and row `num_classes` is that null class.

A row may hold several tokens (`tokens`, default 1): then it can start as a text encoder's tokens for the class's
name (zoo/train/stages.py `class_tokens_from_text`), so a U-Net trained on captions reads the labels from its first
step. The null class may use fewer of its row's tokens (`null_tokens`): the rest are masked out of attention, as a
text encoder's padding is (the empty prompt encodes to fewer tokens than a caption).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import torch
from torch import nn

from components.base import Config, HubModule
from components.registry import CONDITIONERS
from components.validation import MAX_CHANNELS, MAX_CLASSES, MAX_PARAMETERS, MAX_TOKENS, require_int


@dataclasses.dataclass(frozen=True)
class ClassConfig(Config):
    num_classes: int = 10
    dim: int = 128
    tokens: int = 1
    null_tokens: int | None = None  # None: all `tokens`

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_ints("num_classes", maximum=MAX_CLASSES, why="ImageNet-21k has 21,841")
        self.check_ints("dim", maximum=MAX_CHANNELS, why="SDXL's context is 2048 wide")
        self.check_ints("tokens", maximum=MAX_TOKENS, why="CLIP's context is 77 tokens")
        if self.null_tokens is not None:
            self.check_ints("null_tokens", maximum=self.tokens, why=f"the row holds tokens={self.tokens}")
        require_int(
            "ClassConfig: the embedding table's size (num_classes + 1) * tokens * dim",
            (self.num_classes + 1) * self.tokens * self.dim,
            maximum=MAX_PARAMETERS,
            why="4 bytes each in float32",
        )


class ClassConditioner(HubModule):
    """labels (B,) in [0, num_classes] -> tokens (B, tokens, dim) and a mask (B, tokens): all True, except past
    the null class's `null_tokens`."""

    config_class = ClassConfig
    mode = "crossattn"
    kind = "class"  # takes integer labels, not prompts (components/conditioners/base.py)

    def __init__(self, config: ClassConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.num_classes + 1, config.tokens * config.dim)  # a row: tokens x dim

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    def empty_input(self) -> int:
        """The null class (index num_classes): the unconditional input of classifier-free guidance."""
        return self.null_class

    def unknown_words(self, texts: list[Any]) -> list[list[str]]:
        """Labels have no words: one empty list per input."""
        return [[] for _ in texts]

    def forward(self, labels: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.check_labels(labels).to(self.embedding.weight.device)
        tokens = self.embedding(y).view(len(y), self.config.tokens, self.config.dim)  # (B, T * D) -> (B, T, D)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if self.config.null_tokens is not None:
            mask[y == self.null_class, self.config.null_tokens :] = False
        return tokens, mask

    def check_labels(self, labels: list[int] | torch.Tensor) -> torch.Tensor:
        """A long tensor (B,) of labels in [0, num_classes]; clear errors otherwise."""
        if isinstance(labels, torch.Tensor):
            if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
                raise TypeError(f"class labels must be an integer tensor, got dtype {labels.dtype}")
            y = labels.reshape(-1) if labels.dim() == 0 else labels
            if y.dim() != 1:
                raise ValueError(f"class labels must be a 1-D tensor (B,), got shape {tuple(labels.shape)}")
        elif isinstance(labels, (list, tuple)):
            bad = [type(v).__name__ for v in labels if not isinstance(v, numbers.Integral) or isinstance(v, bool)]
            if bad:
                raise TypeError(f"class labels must be ints, got {', '.join(sorted(set(bad)))} in the batch")
            y = torch.tensor([int(v) for v in labels], dtype=torch.long)
        else:
            raise TypeError(f"pass class labels as a list of ints or an integer tensor, got {type(labels).__name__}")
        if y.numel() == 0:
            raise ValueError("empty batch: pass at least one class label")
        if y.min() < 0 or y.max() > self.null_class:
            raise ValueError(
                f"class labels must lie in [0, {self.null_class}] ({self.null_class} is the null class), "
                f"got {sorted(set(y[(y < 0) | (y > self.null_class)].tolist()))}"
            )
        return y.long()


@CONDITIONERS.register("class", tiny={"dim": 16})
def class_label(**config: int) -> ClassConditioner:
    """A learned class-label token (+ null class for CFG), cross-attention."""
    return ClassConditioner(ClassConfig(**config))
