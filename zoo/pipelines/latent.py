"""Latent diffusion (Rombach et al. 2022): encode -> diffuse in the autoencoder's latent space -> decode.

Conditioning follows the LDM figure's switch: token sequences (CLIP, BERT, class label) enter the U-Net
through cross-attention; spatially aligned maps (semantic maps) are concatenated to z_t; both, or none.
Classifier-free guidance (Ho & Salimans 2022, Eq. 6): eps = eps_uncond + w (eps_cond - eps_uncond), in the
denoiser adapter (components/samplers/denoiser.py).
"""

from __future__ import annotations

from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from components.samplers.common import Callback
from components.samplers.denoiser import MAX_GUIDANCE, Denoiser
from components.validation import ArgumentTypeError, require_int, require_number, require_text
from zoo.pipelines import super_resolution
from zoo.pipelines.base import MAX_SIDE_FACTOR, Pipeline, check_num_images, check_seed, to_pil, to_tensor
from zoo.pipelines.repaint import inpainting_method
from zoo.recipes import Recipe

SPACES = ("pixel", "latent")


def concatenated(kwargs: dict, extra: torch.Tensor) -> dict:
    """The U-Net's keyword arguments with `extra` appended to its concat input (after a semantic map's)."""
    concat = extra if kwargs.get("concat") is None else torch.cat([kwargs["concat"], extra], dim=1)
    return {**kwargs, "concat": concat}


class LatentPipeline(Pipeline):
    """The Stable Diffusion shape of pipeline, at the zoo's size."""

    def __init__(self, recipe: Recipe, parts: dict[str, Any], **placement: Any):
        """As Pipeline's (placement: device, dtype), plus the autoencoder and the optional conditioners."""
        self.autoencoder = parts["autoencoder"]
        self.conditioner = parts.get("conditioner")
        self.spatial = parts.get("spatial")
        super().__init__(recipe, parts, **placement)

    def to(self, device: torch.device | str, dtype: torch.dtype | str | None = None) -> LatentPipeline:
        """As Pipeline.to, but a float16 autoencoder stays in float32 (SD's VAE overflows in float16, which is
        why diffusers sets force_upcast on it)."""
        super().to(device, dtype)
        if self.dtype == torch.float16:
            self.autoencoder.float()
        return self

    def offload_order(self) -> list[str]:
        return [role for role in ("conditioner", "spatial", "unet", "autoencoder") if role in self.modules()]

    def modules(self) -> dict[str, nn.Module]:
        found = {"unet": self.unet, "autoencoder": self.autoencoder}
        found.update({role: m for role in ("conditioner", "spatial") if (m := getattr(self, role)) is not None})
        return found

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.recipe.image_size // self.autoencoder.downsample_factor
        return (self.autoencoder.latent_channels, side, side)

    def latent_shape_for(self, height: int | None, width: int | None) -> tuple[int, int, int]:
        """(C, h, w) of the latents of a height x width image (the recipe's image_size where None)."""
        factor = self.autoencoder.downsample_factor
        multiple = factor * 2 ** (len(self.unet.config.channel_mult) - 1)
        sides = []
        for name, side in (("height", height), ("width", width)):
            side = self.recipe.image_size if side is None else side
            why = f"a multiple of {multiple}, the autoencoder's factor {factor} x the U-Net's downsampling"
            largest = MAX_SIDE_FACTOR * self.recipe.image_size
            limit = f"at most {MAX_SIDE_FACTOR}x the model's image_size {self.recipe.image_size}"
            if require_int(name, side, minimum=multiple, maximum=largest, why=f"{why}; {limit}") % multiple:
                raise ValueError(f"{name} must be {why}, got {side!r}")
            sides.append(side // factor)
        return (self.autoencoder.latent_channels, *sides)

    @property
    def conditioning(self) -> str:
        """Which path the condition takes into the U-Net, in words (shown by the app)."""
        paths = []
        if self.conditioner is not None:
            paths.append(f"{self.recipe.conditioner.name} tokens through cross-attention")
        if self.recipe.concat_image == "low_res":  # tau = identity: the cross-attention sees a constant
            side = self.latent_shape[1]
            return f"a {side}x{side} low-res image concatenated to z_t (cross-attention: the empty prompt's tokens)"
        if self.spatial is not None:
            paths.append("a semantic map concatenated to z_t")
        return " and ".join(paths) or "none (unconditional)"

    # The autoencoder, LDM Sec. 3.1: z = scaling_factor * E(x), x = D(z / scaling_factor).
    @torch.no_grad()
    def encode(self, image: Any) -> torch.Tensor:
        x = self.autoencoder_input(to_tensor(image, self.recipe.image_size))
        return self.autoencoder.encode(x) * self.autoencoder.scaling_factor

    @torch.inference_mode()  # returns images, so no tensor leaves it
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        self.check_latents(latents)
        return to_pil(self.autoencoder.decode(self.autoencoder_input(latents) / self.autoencoder.scaling_factor))

    def vlb(self, images: Any, **options: Any) -> NoReturn:
        """Refused: a latent model's bound is of the latents, not of the image (the error says why)."""
        raise ValueError(
            f"{self.recipe.name} is a latent pipeline: its diffusion bound (DDPM Eq. 5) would bound -log p(z) of the "
            "autoencoder's continuous latents z = E(x), not the bits/dim of the image's 8-bit pixels (there is no "
            "discretised decoder over pixel values, and E is not invertible), so vlb() is for pixel pipelines "
            "only (e.g. ddpm-cosine)"
        )

    def check_latents(self, latents: Any) -> None:
        """Latents (B, C, h, w): a float tensor with the autoencoder's C channels, each side within the model's."""
        c, largest = self.autoencoder.latent_channels, MAX_SIDE_FACTOR * self.latent_shape[1]
        form = f"a float tensor (B, {c}, h, w) with h, w <= {largest} ({MAX_SIDE_FACTOR}x the model's latent side)"
        if not isinstance(latents, torch.Tensor):
            raise ArgumentTypeError(f"latents must be {form}, got {type(latents).__name__}")
        shape = tuple(latents.shape)
        if latents.dim() != 4 or not latents.is_floating_point() or shape[1] != c or max(shape[2:]) > largest:
            raise ValueError(f"latents must be {form}, got {latents.dtype} of shape {shape}")

    def autoencoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """x on the autoencoder's device and dtype; with CPU offload its hook moves it in first (encode and
        decode are not `forward`, which is all the hook wraps: diffusers' apply_forward_hook does the same)."""
        if (hook := self.offload_hooks.get("autoencoder")) is not None:
            hook.hook.pre_forward(self.autoencoder)  # accelerate's CpuOffload hook moves it in
        weight = next(self.autoencoder.parameters())
        return x.to(weight.device, weight.dtype)

    def unknown_words(self, prompt: str | None) -> list[str]:
        """Words of `prompt` the text conditioner does not know (empty for other conditioners)."""
        if not prompt or self.conditioner is None or self.conditioner.kind != "text":
            return []
        return self.conditioner.unknown_words([prompt])[0]

    def condition(
        self, prompt: Any, semantic_map: Any, batch: int, latent_size: tuple[int, int] | None = None
    ) -> dict[str, torch.Tensor | None]:
        """The U-Net's keyword arguments for one condition, repeated over the batch (a map pooled to latent_size)."""
        kwargs: dict[str, torch.Tensor | None] = {}
        if self.conditioner is not None:
            text = self.conditioner.empty_input() if prompt is None or prompt == "" else prompt
            context, mask = self.conditioner([text] * batch)
            kwargs.update(context=context.to(self.device), context_mask=mask.to(self.device))
        if self.spatial is not None:
            chosen = self.spatial.empty_input() if semantic_map is None else semantic_map
            maps = self.spatial(chosen, latent_size)
            if len(maps) not in (1, batch):
                raise ValueError(
                    f"semantic_map holds {len(maps)} maps but num_images={batch}: pass one map (H, W) for every "
                    "image, or num_images maps (num_images, H, W)"
                )
            kwargs["concat"] = maps.expand(batch, *maps.shape[1:]).to(self.device)
        return kwargs

    def denoiser(self, cond: dict, uncond: dict | None, guidance_scale: float) -> Denoiser:
        """The U-Net as the samplers see it: (eps, x0) under the recipe's parameterisation, with classifier-free
        guidance (Ho & Salimans 2022 Eq. 6) when an unconditional input is given and w != 1."""
        return Denoiser(
            self.network,
            self.schedule,
            self.recipe.prediction_type,
            cond=cond,
            uncond=uncond,
            guidance_scale=guidance_scale,
        )

    def generate(
        self,
        prompt: Any = None,
        *,
        negative_prompt: str | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        num_images: int = 1,
        semantic_map: Any = None,
        callback: Callback | None = None,
        height: int | None = None,
        width: int | None = None,
        image: Any = None,
        strength: float = 1.0,
        mask_image: Any = None,
        latents: torch.Tensor | None = None,
        noise_level: int | None = None,
        inpaint: str | None = None,
        repaint_jump: int | None = None,
        repaint_resample: int | None = None,
    ) -> list[Image.Image]:
        """Sample images for a prompt (and/or a semantic map); the same seed gives the same images.

        height, width: the image size (the recipe's image_size by default); models without a semantic map
        allow other sizes, multiples of the autoencoder's factor times the U-Net's downsampling.
        image, strength: image-to-image (SDEdit): the image (resized to height x width) encoded, noised to
        `strength` of the grid and denoised from there (zoo/pipelines/editing.py). mask_image (white = repaint):
        the blended latent step keeps the rest, or with inpaint="repaint" RePaint's resampling (repaint_jump,
        repaint_resample; DDPM's sampler; zoo/pipelines/repaint.py); its latents equal the image's exactly, its
        pixels up to the autoencoder's round trip. latents: x_T (or the eps that noises the image),
        (num_images, C, h, w). A super-resolution model (recipe concat_image "low_res") takes the low-res
        `image` instead, no prompt, and `noise_level` s for its noise augmentation
        (zoo/pipelines/super_resolution.py).
        """
        if self.recipe.concat_image == "low_res":
            if (inpaint, repaint_jump, repaint_resample) != (None, None, None):
                raise ValueError(f"{self.recipe.name} upsamples a low-res image: it does not inpaint (no inpaint=)")
            return self.upsample(
                image,
                prompt=prompt,
                negative_prompt=negative_prompt,
                noise_level=noise_level,
                strength=strength,
                mask_image=mask_image,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                steps=steps,
                sampler=sampler,
                seed=seed,
                num_images=num_images,
                callback=callback,
                latents=latents,
            )
        if noise_level is not None:
            raise ValueError(f"noise_level is for super-resolution models (e.g. ldm-sr-kl), not {self.recipe.name}")
        seed, num_images = check_seed(seed), check_num_images(num_images)
        if self.spatial is not None and (height, width) != (None, None):
            raise ValueError(
                f"{self.recipe.name} draws at its image_size (the map is pooled to it): leave height and width unset"
            )
        latent_shape = self.latent_shape_for(height, width)
        w = self.recipe.guidance_scale if guidance_scale is None else guidance_scale
        w = require_number("guidance_scale", w, minimum=0, maximum=MAX_GUIDANCE)
        if self.spatial is not None and semantic_map is None:
            raise ValueError(f"{self.recipe.name} is conditioned on a semantic map: pass semantic_map=")
        if self.conditioner is not None and self.conditioner.kind == "text":
            for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
                if text is not None:
                    require_text(name, text)
        has_condition = self.conditioner is not None or self.spatial is not None
        cond = self.condition(prompt, semantic_map, num_images, latent_shape[1:])
        uncond = (
            self.condition(negative_prompt, None, num_images, latent_shape[1:]) if has_condition and w != 1.0 else None
        )
        trained = self.recipe.concat_image == "inpaint"
        masked = mask_image is not None
        repaint = inpainting_method(inpaint, repaint_jump, repaint_resample, masked=masked, trained=trained)
        factor = self.autoencoder.downsample_factor
        edit = self.edit_inputs(image, mask_image, latent_shape[1] * factor, latent_shape[2] * factor)
        denoiser: Any = self.denoiser(cond, uncond, w)
        if trained:  # trained to inpaint: the mask goes in by concatenation, no blend
            if edit["mask"] is None:
                raise ValueError(f"{self.recipe.name} is an inpainting model: pass image= and mask_image=")
            image_and_mask = (edit["image"], edit.pop("mask"))
            denoiser = lambda generator: self.denoiser(  # noqa: E731  (drawn after the starting noise)
                *self.with_inpainting_input((cond, uncond), *image_and_mask, generator, num_images), w
            )
        z0 = self.draw(
            denoiser,
            (num_images, *latent_shape),
            seed=seed,
            sampler=sampler,
            steps=self.recipe.steps if steps is None else steps,
            callback=callback,
            latents=latents,
            strength=strength,
            repaint=repaint,
            **edit,
        )
        return self.decode(z0)

    def upsample(
        self,
        image: Any,
        *,
        noise_level: int | None,
        seed: int | None,
        num_images: int,
        steps: int | None,
        sampler: str | None,
        callback: Callback | None,
        latents: torch.Tensor | None,
        **unused: Any,
    ) -> list[Image.Image]:
        """Super-resolution by concatenation (LDM Sec. 4.4): `image`, the low-res RGB image at latent resolution
        (resized there, said), concatenated to z_t at every step, noised first to `noise_level` when the model was
        trained with noise augmentation. What it cannot use is refused: a prompt (tau = identity), a mask,
        strength, guidance (the low-res image is never dropped in training), another size."""
        name = self.recipe.name
        self.refuse_for_upsampling(**unused)
        seed, num_images = check_seed(seed), check_num_images(num_images)
        level = super_resolution.check_noise_level(noise_level, self.recipe.noise_augmentation, name)
        side = self.latent_shape[1]
        low_res = super_resolution.load_low_res(image, side, name).to(self.device)
        cond = self.condition(None, None, num_images)  # the conditioner's empty prompt: a constant context
        denoiser = lambda generator: self.denoiser(  # noqa: E731  (drawn after the starting noise)
            self.with_low_res_input(cond, low_res, level, generator, num_images), None, 1.0
        )
        z0 = self.draw(
            denoiser,
            (num_images, *self.latent_shape),
            seed=seed,
            sampler=sampler or self.recipe.sampler,
            steps=self.recipe.steps if steps is None else steps,
            callback=callback,
            latents=latents,
        )
        return self.decode(z0)

    def refuse_for_upsampling(self, **given: Any) -> None:
        """The generate arguments a super-resolution model has no use for: each given one is an error."""
        name = self.recipe.name
        reasons = {
            "prompt": "tau = identity, its only condition is the low-res image (LDM Sec. 4.4)",
            "negative_prompt": "there is no guidance (the low-res image is never dropped in training)",
            "mask_image": "it upsamples the whole image",
            "height": "it draws at its image_size",
            "width": "it draws at its image_size",
        }
        for key, why in reasons.items():
            if not (given.get(key) is None or (isinstance(given[key], str) and given[key] == "")):
                raise ValueError(f"{name} takes no {key}: {why}; leave it unset")
        if given.get("strength", 1.0) != 1.0:
            raise ValueError(f"{name} takes no strength: it draws from pure noise (image= is the low-res input)")
        if given.get("guidance_scale") not in (None, 1.0):
            raise ValueError(
                f"{name} takes no guidance_scale (only 1): it was never trained without its low-res image, so there "
                "is no unconditional branch to guide against"
            )

    def with_low_res_input(
        self, cond: dict, low_res: torch.Tensor, level: int, generator: torch.Generator, batch: int
    ) -> dict:
        """The condition with the super-resolution input: the low-res image (1, 3, h, w), tiled over the batch and
        noised to `level` with noise of its own per image (y_s ~ q(x_s|x_0), from `generator`), concatenated after
        z_t; the level as the U-Net's class label when the model was trained with noise augmentation."""
        levels = torch.full((batch,), level, dtype=torch.long)
        tiled = low_res.expand(batch, -1, -1, -1)
        y = super_resolution.noised_low_res(self.schedule, tiled, levels, generator).to(self.device, self.dtype)
        kwargs = concatenated(cond, y)
        if self.recipe.noise_augmentation:
            kwargs["class_labels"] = levels.to(self.device)
        return kwargs

    def with_inpainting_input(
        self,
        conditions: tuple[dict, dict | None],
        image: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
        batch: int,
    ) -> list[dict | None]:
        """The conditions with the inpainting model's concatenated input, in diffusers' order (the
        StableDiffusionInpaintPipeline's 9-channel U-Net): the mask at latent resolution (nearest), then the
        latent of the masked image x * (mask < 0.5), sampled from `generator`; the same for the unconditional
        half of classifier-free guidance (after any semantic map's channels)."""
        z = self.diffusion_input(image * (mask < 0.5), generator)
        extra = torch.cat([F.interpolate(mask, size=z.shape[-2:]).to(z), z], dim=1)  # (1, 1 + C, h, w)
        tiled = extra.expand(batch, -1, -1, -1)
        return [None if kwargs is None else concatenated(kwargs, tiled) for kwargs in conditions]

    def diffusion_input(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """z = scaling_factor * a sample of q(z|x) (LDM Sec. 3.1), drawn from `generator` as diffusers'
        img2img and inpainting pipelines draw it (retrieve_latents, sample_mode "sample")."""
        z = self.autoencoder.encode(self.autoencoder_input(image), sample=True, generator=generator)
        return (z * self.autoencoder.scaling_factor).to(self.device, self.dtype)

    @torch.no_grad()
    def forward_noise(self, image: Any, t: int, *, seed: int = 0, space: str = "pixel") -> Image.Image:
        """x_t from the closed form (DDPM Eq. 4) in pixel space, or on z = E(x) then decoded (LDM)."""
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        t, seed = self.check_t(t), check_seed(seed)
        if space == "pixel":
            x0 = to_tensor(image, self.recipe.image_size).to(self.device)
            return to_pil(self.closed_form(x0, t, seed))[0]
        return self.decode(self.closed_form(self.encode(image), t, seed))[0]
