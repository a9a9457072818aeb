"""What pixel and latent pipelines share: devices, seeds, image conversion, the sampling call, saving.

The sampling loop itself lives in the samplers (components/samplers), one function per method, which the
pipelines call with a `Denoiser` (the network under its parameterisation, guided) on a timestep grid built
here once from the recipe; this keeps process, network and pipeline separate.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from components.registry import SAMPLERS
from components.samplers.common import Callback, Grid, Sampler
from components.samplers.denoiser import Denoiser
from components.unets.compiled import CompiledUNet
from components.unets.traced import TracedUNet
from components.validation import require_int
from zoo import pipeline_io
from zoo.pipelines import image_input
from zoo.pipelines.editing import Blend, check_strength, img2img_grid, noised
from zoo.pipelines.repaint import RePaint
from zoo.recipes import Recipe

logger = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1
MAX_IMAGES = 16
MAX_SIDE_FACTOR = 8  # height, width, maps and image tensors: at most 8x the model's image_size (SD 1.5: 4096)


def default_device() -> torch.device:
    """The GPU when there is one, otherwise the CPU, as accelerate decides."""
    from accelerate import PartialState

    return PartialState().device


def check_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """float32 (None), or float16 / bfloat16 where `device` computes in them: bfloat16 on the CPU and on GPUs
    that have it (torch.cuda.is_bf16_supported), float16 on GPUs (CUDA, MPS, XPU) but not on the CPU."""
    chosen = getattr(torch, dtype, None) if isinstance(dtype, str) else (dtype or torch.float32)
    supported = {torch.float32}
    supported |= {torch.bfloat16} if device.type != "cuda" or torch.cuda.is_bf16_supported() else set()
    supported |= {torch.float16} if device.type in ("cuda", "mps", "xpu") else set()
    if chosen not in supported:
        names = sorted(str(d).removeprefix("torch.") for d in supported)
        raise ValueError(f"dtype {dtype!r} is not supported on {device.type}; allowed there: {', '.join(names)}")
    return chosen


def check_seed(seed: int | None) -> int:
    """A seed for torch's CPU generator; None draws a fresh one (returned, so it can be shown and reused)."""
    if seed is None:
        return random.randrange(MAX_SEED)
    return require_int("seed", seed, minimum=0, maximum=MAX_SEED, why="2**63 - 1, torch's largest seed")


def check_num_images(num_images: int) -> int:
    return require_int("num_images", num_images, minimum=1, maximum=MAX_IMAGES)


def to_tensor(image: Any, size: int | None = None) -> torch.Tensor:
    """A PIL image, a uint8 HxWx3 array, or a float (3, H, W) / (B, 3, H, W) tensor -> (B, 3, H, W) in [-1, 1].

    size: images are resized to size x size; tensors are taken as they are, each side at most 8x size."""
    if isinstance(image, torch.Tensor):
        x = image if image.dim() == 4 else image.unsqueeze(0)
        largest = MAX_SIDE_FACTOR * size if size is not None else None
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point() or (largest and max(x.shape[2:]) > largest):
            within = f", H and W <= {largest} ({MAX_SIDE_FACTOR}x the model's image_size)" if largest else ""
            raise ValueError(
                f"an image tensor must be float (3, H, W) or (B, 3, H, W) in [-1, 1]{within}, got {image.dtype} "
                f"of shape {tuple(image.shape)}"
            )
        return x
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"an image array must be uint8 HxW or HxWxC, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, a uint8 array or an image tensor, got {type(image).__name__}")
    image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return (array.permute(2, 0, 1).float() / 127.5 - 1.0).unsqueeze(0)  # (H, W, 3) -> (1, 3, H, W) in [-1, 1]


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images."""
    array = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in array]  # (3, H, W) -> (H, W, 3)


def image_grid(
    images: Sequence[Image.Image],
    columns: int | None = None,
    *,
    gap: int = 0,
    background: str | tuple[int, int, int] = (128, 128, 128),
) -> Image.Image:
    """The images on one sheet, left to right in rows of `columns` (one row by default; columns=1 stacks them),
    `gap` pixels apart; each cell is as wide as its column's widest image and as tall as its row's tallest."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = require_int("columns", len(images) if columns is None else columns, minimum=1)
    gap = require_int("gap", gap, minimum=0)
    rows = [images[i : i + columns] for i in range(0, len(images), columns)]
    widths = [max(row[c].width for row in rows if c < len(row)) for c in range(min(columns, len(images)))]
    heights = [max(image.height for image in row) for row in rows]
    size = (sum(widths) + gap * (len(widths) - 1), sum(heights) + gap * (len(heights) - 1))
    sheet = Image.new("RGB", size, background)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            sheet.paste(image, (sum(widths[:c]) + gap * c, sum(heights[:r]) + gap * r))
    return sheet


class Pipeline:
    """A recipe's parts, assembled. Subclasses add `generate` and their own `forward_noise`."""

    def __init__(
        self,
        recipe: Recipe,
        parts: dict[str, Any],
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ):
        self.recipe = recipe
        self.schedule = parts["schedule"]
        self.unet: nn.Module = parts["unet"]
        self.pretrained = False  # set by the builder when trained weights were loaded
        self.offload_hooks: dict[str, Any] = {}  # role -> accelerate's offload hook (enable_model_cpu_offload)
        self.fast_unet: TracedUNet | CompiledUNet | None = None  # set by enable_traced_unet / enable_compiled_unet
        self.to(device or default_device(), dtype)

    @property
    def scheduler(self) -> Any:
        """The noise schedule (betas, alphas_cumprod, ...), as the foundation issue names it."""
        return self.schedule

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def to(self, device: torch.device | str, dtype: torch.dtype | str | None = None) -> Pipeline:
        """Move every module to `device`; cast them to `dtype` when given (and the device supports it)."""
        if self.offload_hooks:
            raise ValueError("this pipeline uses model CPU offload (accelerate's hooks place each module): rebuild it")
        self.device = torch.device(device)
        self.dtype = check_dtype(dtype, self.device)
        for module in self.modules().values():
            module.to(self.device) if dtype is None else module.to(self.device, self.dtype)
            module.eval()
        return self

    @property
    def network(self) -> nn.Module | TracedUNet | CompiledUNet:
        """What the sampler's denoiser calls: the U-Net, or its traced or compiled twin once enabled."""
        return self.unet if self.fast_unet is None else self.fast_unet

    def enable_traced_unet(self) -> Pipeline:
        """Sample through the U-Net traced once per input signature (components/unets/traced.py): the same
        outputs with less Python per step (~1.25x per U-Net call on one CPU thread, README "Where the time
        goes"), for a ~0.5 s trace on the first call of each batch size and condition."""
        if self.offload_hooks:
            raise ValueError("the traced U-Net would bypass the CPU offload hooks: use one or the other")
        self.fast_unet = TracedUNet(self.unet)
        return self

    def enable_compiled_unet(self) -> Pipeline:
        """Sample through the U-Net compiled by TorchInductor (components/unets/compiled.py): the same outputs
        (to float rounding) with no Python between kernels (~1.35x per U-Net call of `ldm-clip-kl` on 2 CPU
        threads, README "Where the time goes"), for a compile of 1-3 minutes on the first call of each batch size
        and condition on a 2-core CPU. Needs a C++ compiler."""
        if self.offload_hooks:
            raise ValueError("the compiled U-Net would bypass the CPU offload hooks: use one or the other")
        self.fast_unet = CompiledUNet(self.unet)
        return self

    def offload_order(self) -> list[str]:
        """The roles of the modules in the order one generation calls them (each moved in, the previous out)."""
        return ["unet"]

    def enable_model_cpu_offload(self, device: torch.device | str | None = None) -> Pipeline:
        """Keep every module on the CPU and move each to `device` only while it runs (accelerate's cpu offload
        hooks, as diffusers' enable_model_cpu_offload): one module at a time on a GPU with little memory."""
        from accelerate import cpu_offload_with_hook

        if self.fast_unet is not None:
            raise ValueError("model CPU offload needs the eager U-Net (its hooks wrap forward): rebuild the pipeline")

        execution = torch.device(device) if device is not None else default_device()
        hook, modules = None, self.modules()
        for role in self.offload_order():
            modules[role].to("cpu")
            _, hook = cpu_offload_with_hook(modules[role], execution, prev_module_hook=hook)
            self.offload_hooks[role] = hook
        self.device = execution
        return self

    def check_steps(self, steps: int) -> int:
        return require_int("steps", steps, minimum=1, maximum=self.num_timesteps, why="the schedule's T")

    def check_t(self, t: int) -> int:
        """Forward-noise time in the paper's convention: t = 0 is the clean image, t = T the last step."""
        return require_int("t", t, minimum=0, maximum=self.num_timesteps, why="0 the image, T pure noise")

    def noise(self, shape: Sequence[int], seed: int) -> tuple[torch.Tensor, torch.Generator]:
        """Starting noise from a CPU generator seeded per call (the same image on every device), then moved."""
        generator = torch.Generator("cpu").manual_seed(seed)  # as diffusers' randn_tensor with a CPU generator
        return torch.randn(tuple(shape), generator=generator, dtype=self.dtype).to(self.device), generator

    def closed_form(self, x0: torch.Tensor, t: int, seed: int) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), DDPM Eq. 4 (t = 0 returns x_0)."""
        if t == 0:
            return x0
        eps, _ = self.noise(x0.shape, seed)
        index = torch.full((x0.shape[0],), t - 1, dtype=torch.long, device=self.device)  # 0-based index
        return self.schedule.q_sample(x0, index, eps)

    def grid(self, sampler: Sampler, steps: int) -> Grid:
        """The timestep grid `sampler` visits in `steps` steps, placed as the recipe says (spacing, offset, where
        the last step lands); img2img starts from its last entries (`grid[-k:]`)."""
        return sampler.grid(
            self.schedule,
            self.check_steps(steps),
            spacing=self.recipe.timestep_spacing,
            offset=self.recipe.steps_offset,
            set_alpha_to_one=self.recipe.set_alpha_to_one,
        )

    @torch.inference_mode()  # as no_grad, and no version counters or view tracking per op: ~3% per U-Net call
    def draw(
        self,
        denoiser: Denoiser | Callable[[torch.Generator], Denoiser],
        shape: Sequence[int],
        *,
        seed: int,
        sampler: str | Sampler | None,
        steps: int,
        callback: Callback | None,
        latents: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        strength: float = 1.0,
        mask: torch.Tensor | None = None,
        repaint: RePaint | None = None,
    ) -> torch.Tensor:
        """x_0 in the diffusion space: from x_T (text-to-image), from the image noised to SDEdit's start
        (`strength` < 1), and with `mask` (1 repaint, 0 keep) the known region blended in after every step
        (zoo/pipelines/editing.py). One CPU generator, drawn as diffusers' pipelines draw: the image's
        posterior sample first (latent pipelines), then the starting noise, then the sampler's noise.
        sampler None: the recipe's, DDPM's with `repaint` (RePaint's resampling, zoo/pipelines/repaint.py).

        denoiser: a Denoiser, or a function of the generator that makes one after the starting noise is drawn
        (the inpainting model samples its masked image's latent there, as diffusers' pipeline does)."""
        strength = check_strength(strength)
        sampler = sampler or ("ddpm" if repaint is not None else self.recipe.sampler)
        chosen = sampler if isinstance(sampler, Sampler) else SAMPLERS.build(sampler)  # a built one has its options
        grid, generator = self.grid(chosen, steps), torch.Generator("cpu").manual_seed(seed)
        x0 = None
        if image is not None and (strength < 1 or mask is not None):
            x0 = self.diffusion_input(image, generator).expand(*shape)
        eps = self.starting_noise(shape, generator, latents)
        run = img2img_grid(grid, strength) if image is not None else grid
        if run is None:  # strength 0: no step, the image itself
            return x0
        if repaint is not None:
            repaint.check(chosen, run)
        x_T = eps if x0 is None or strength == 1.0 else noised(self.schedule, x0, run.timesteps[0], eps)
        if mask is not None:
            mask = F.interpolate(mask, size=tuple(shape[-2:])) if tuple(mask.shape[-2:]) != tuple(shape[-2:]) else mask
            callback = Blend(self.schedule, run, x0, eps, mask.to(self.device, self.dtype), callback)
        denoiser = denoiser if isinstance(denoiser, Denoiser) else denoiser(generator)
        if repaint is not None:
            return repaint.sample(denoiser, x_T, run, generator=generator, blend=callback)
        return chosen.sample(denoiser, x_T, run, generator=generator, callback=callback)

    def edit_inputs(self, image: Any, mask_image: Any, height: int, width: int) -> dict[str, torch.Tensor | None]:
        """`draw`'s image and mask from what `generate` was given (zoo/pipelines/image_input.py checks them)."""
        if image is None:
            if mask_image is not None:
                raise ValueError("mask_image needs the image it masks: pass image= too")
            return {"image": None, "mask": None}
        mask = None if mask_image is None else image_input.load_mask(mask_image, image, height, width)
        return {"image": image_input.load_image(image, height, width), "mask": mask}

    def diffusion_input(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """An image (1, 3, H, W) in [-1, 1] in the space the U-Net diffuses: pixels here."""
        return image.to(self.device, self.dtype)

    def starting_noise(
        self, shape: Sequence[int], generator: torch.Generator, latents: torch.Tensor | None
    ) -> torch.Tensor:
        """eps ~ N(0, I) from the CPU generator, or the given `latents` (checked: shape, a float dtype)."""
        if latents is None:
            return torch.randn(tuple(shape), generator=generator, dtype=self.dtype).to(self.device)
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            kind = latents.dtype if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise TypeError(f"latents must be a floating-point tensor (the starting noise), got {kind}")
        if tuple(latents.shape) != tuple(shape):
            got = tuple(latents.shape)
            raise ValueError(f"latents must have shape {tuple(shape)} (num_images, C, h, w), got {got}")
        if not torch.isfinite(latents).all():
            raise ValueError("latents hold NaN or infinite values")
        return latents.to(self.device, self.dtype)

    # Saving: zoo/pipeline_io.py knows the layouts; the pipeline only hands itself over.
    def save_pretrained(self, folder: str | Path) -> Path:
        """recipe.json + one Hub-layout folder per part; a "diffusers"-layout recipe writes diffusers' layout."""
        return pipeline_io.save(self, folder)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
        """Save to a temporary folder and upload it with huggingface_hub; returns the commit URL."""
        return pipeline_io.push_to_hub(self, repo_id, private=private, token=token)

    def __repr__(self) -> str:
        weights = "trained" if self.pretrained else "random"
        return f"{type(self).__name__}({self.recipe.name!r}, {weights} weights, device={self.device})"
