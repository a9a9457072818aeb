"""The U-Net's condition for a training batch, with condition dropout for classifier-free guidance.

Ho & Salimans 2022: with probability `dropout` the condition is replaced by the conditioner's "empty" input,
so one network learns both eps(z_t, c) and eps(z_t, empty). A frozen text tower (CLIP) is run once per
distinct caption and its tokens cached; a jointly trained one (BERT) runs every step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from zoo.data.masks import random_masks
from zoo.pipelines import super_resolution
from zoo.pipelines.latent import concatenated
from zoo.train.data import to_float

SAMPLE_PROMPTS = [
    "a red circle on a blue background",
    "a small yellow triangle in the top left on a black background",
    "a large green square in the center on a white background",
    "a blue circle in the bottom right on a yellow background",
    "a purple triangle on a orange background",
    "a small white square in the top right on a red background",
    "a large black circle on a green background",
    "an orange triangle in the bottom left on a purple background",
]


class TrainingCondition:
    def __init__(self, pipe: Any, data: dict, device: torch.device, *, dropout: float):
        self.pipe, self.data, self.device, self.dropout = pipe, data, device, dropout
        self.conditioner = getattr(pipe, "conditioner", None)
        self.spatial = getattr(pipe, "spatial", None)
        self.is_text = self.conditioner is not None and self.conditioner.kind == "text"
        self.low_res = pipe.recipe.concat_image == "low_res"
        self.cache: tuple[torch.Tensor, torch.Tensor, dict[str, int]] | None = None
        if (
            self.conditioner is not None
            and self.is_text
            and not any(p.requires_grad for p in self.conditioner.parameters())
        ):
            captions = [] if self.low_res else data["captions"]  # super-resolution: the empty prompt only
            self.cache = self.encode_unique(captions)

    @torch.no_grad()
    def encode_unique(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        unique = sorted(set(captions)) + [self.conditioner.empty_input()]
        index = {c: i for i, c in enumerate(unique)}
        chunks = [self.conditioner(unique[i : i + 512]) for i in range(0, len(unique), 512)]
        return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks]), index

    def batch(self, idx: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        drop = torch.rand(len(idx), generator=generator) < self.dropout
        drop = drop | self.low_res  # super-resolution: tau = identity, the text is always the empty prompt
        kwargs: dict[str, torch.Tensor] = {}
        if self.conditioner is not None:
            kwargs.update(self.tokens(idx, drop))
        if self.spatial is not None:
            kwargs["concat"] = self.maps(idx, drop)
        if self.pipe.recipe.concat_image == "inpaint":  # the text is dropped for CFG; the mask and image never
            kwargs = concatenated(kwargs, self.inpainting_input(idx, generator))
        if self.low_res:
            kwargs = self.super_resolution_input(kwargs, idx, generator)
        return kwargs

    @torch.no_grad()
    def super_resolution_input(self, kwargs: dict, idx: torch.Tensor, generator: torch.Generator) -> dict:
        """The low-res images of the batch (the cached 64x64 images downsampled to latent resolution, per batch:
        zoo/pipelines/super_resolution.py), concatenated after z_t as the pipeline does at sampling; with noise
        augmentation each noised to a level s drawn uniformly in [0, max] (the SD x4 upscaler's training), s given
        as the class label."""
        images = to_float(self.data["images"][idx])
        low_res = super_resolution.low_res_of(images, self.pipe.latent_shape[1])
        largest = self.pipe.recipe.noise_augmentation
        levels = torch.randint(0, largest + 1, (len(idx),), generator=generator) if largest else None
        if levels is not None:
            low_res = super_resolution.noised_low_res(self.pipe.schedule, low_res, levels, generator)
            kwargs = {**kwargs, "class_labels": levels.to(self.device)}
        return concatenated(kwargs, low_res.to(self.device))

    @torch.no_grad()
    def inpainting_input(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The inpainting model's concatenated input for the batch: a random mask (boxes and brush strokes, 10%
        the whole image; zoo/data/masks.py) at latent resolution, then the masked image's latent, in the order the
        pipeline builds it at sampling time (LatentPipeline.with_inpainting_input). The posterior mean here, where
        sampling draws a posterior sample as diffusers does: the two differ by the trained KL encoder's small std."""
        images = to_float(self.data["images"][idx]).to(self.device)
        masks = random_masks(len(idx), images.shape[-1], generator).to(self.device)
        ae = self.pipe.autoencoder
        z = ae.encode(images * (masks < 0.5)) * ae.scaling_factor
        return torch.cat([F.interpolate(masks, size=z.shape[-2:]), z], dim=1)

    def tokens(self, idx: torch.Tensor, drop: torch.Tensor) -> dict[str, torch.Tensor]:
        empty = self.conditioner.empty_input()
        if self.is_text:
            inputs = [empty if d else self.data["captions"][int(i)] for i, d in zip(idx, drop, strict=True)]
        else:
            inputs = [empty if d else int(self.data["class_labels"][i]) for i, d in zip(idx, drop, strict=True)]
        if self.cache is not None:
            context, mask, index = self.cache
            rows = torch.tensor([index[c] for c in inputs])
            return {"context": context[rows].to(self.device), "context_mask": mask[rows].to(self.device)}
        context, mask = self.conditioner(inputs)
        return {"context": context.to(self.device), "context_mask": mask.to(self.device)}

    def maps(self, idx: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        maps = self.data["semantic_maps"][idx].long()
        maps[drop] = -1  # dropped: all "unlabelled", as the spatial conditioner's empty_input()
        return self.spatial(maps.to(self.device)).to(self.device)

    @torch.no_grad()
    def sample_images(self, pipe: Any, *, seed: int) -> list[Image.Image]:
        """Eight images to watch training by: fixed prompts (or labels, or maps), fixed seed."""
        images = []
        for k, prompt in enumerate(SAMPLE_PROMPTS):
            kwargs: dict[str, Any] = {"seed": seed + k}
            if self.spatial is not None:
                kwargs["semantic_map"] = self.data["semantic_maps"][k].long()
            if self.low_res:  # the dataset's image k, downsampled: what it should draw back
                low_res = super_resolution.low_res_of(to_float(self.data["images"][k : k + 1]), pipe.latent_shape[1])
                images += pipe.generate(image=low_res, **kwargs)
                continue
            if self.conditioner is not None:
                kwargs["prompt"] = prompt if self.is_text else int(self.data["class_labels"][k])
            if pipe.recipe.concat_image == "inpaint":  # the dataset's image k, its right half repainted
                size = self.data["images"].shape[-1]
                kwargs["image"] = to_float(self.data["images"][k])
                kwargs["mask_image"] = torch.zeros(size, size)
                kwargs["mask_image"][:, size // 2 :] = 1.0
            images += pipe.generate(**kwargs)
        return images
