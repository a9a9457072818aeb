"""Recipes: a pipeline as plain data (registered part names + keyword arguments), after LDM's configs.

A recipe holds no import paths, callables or tensors, so it round-trips through JSON, is shown in the app,
and is saved next to the weights as `recipe.json`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from components.registry import AUTOENCODERS, CONDITIONERS, SCHEDULES, UNETS, Registry
from components.samplers.common import TIMESTEP_SPACINGS
from components.schedulers.losses import check_objective
from components.schedulers.schedule import PREDICTION_TYPES
from components.schedulers.zero_terminal_snr import check_zero_terminal_snr_settings
from components.validation import MAX_IMAGE_SIZE, MAX_TIMESTEPS, ArgumentTypeError, require_int, require_number

PIPELINE_KINDS = ("pixel", "latent")
# What of a given image a U-Net takes by concatenation: "inpaint", the mask and the masked image's latent (SD
# inpainting's order); "low_res", the low-resolution image itself at latent resolution (LDM Sec. 4.4).
CONCAT_IMAGES = (None, "inpaint", "low_res")
LAYOUTS = ("zoo", "diffusers")  # how save_pretrained writes the weights (zoo/pipeline_io.py)
# The registry that builds each role of a recipe (a semantic map is a conditioner too, on the concat path).
REGISTRIES: dict[str, Registry] = {
    "schedule": SCHEDULES,
    "unet": UNETS,
    "autoencoder": AUTOENCODERS,
    "conditioner": CONDITIONERS,
    "spatial": CONDITIONERS,
}


def as_tuples(value: Any) -> Any:
    return tuple(as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


@dataclasses.dataclass(frozen=True)
class Part:
    """One registered component: its registry name and the keyword arguments its factory gets."""

    name: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:  # JSON gives lists where the configs hold tuples: compare equal after a trip
        object.__setattr__(self, "kwargs", {k: as_tuples(v) for k, v in self.kwargs.items()})

    def with_kwargs(self, **changes: Any) -> Part:
        return Part(self.name, {**self.kwargs, **changes})


ROLES = ("schedule", "unet", "autoencoder", "conditioner", "spatial")


def part_from_dict(role: str, data: Any) -> Part:
    """{"name": registered name, "kwargs": {...}} -> Part; the message names the role and what is wrong."""
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str) or set(data) - {"name", "kwargs"}:
        raise ValueError(f'recipe part {role!r} must be {{"name": <string>, "kwargs": {{...}}}}, got {data!r}')
    kwargs = data.get("kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"recipe part {role!r}: kwargs must be an object of named values, got {kwargs!r}")
    return Part(data["name"], dict(kwargs))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Which parts make a pipeline, and its defaults at sampling time."""

    name: str
    description: str
    kind: str  # "pixel" | "latent"
    schedule: Part
    unet: Part
    autoencoder: Part | None = None  # latent pipelines only
    conditioner: Part | None = None  # token conditioning, through cross-attention
    spatial: Part | None = None  # spatial conditioning, through concatenation to z_t
    prediction_type: str = "eps"
    image_size: int = 64
    sampler: str = "ddim"
    steps: int = 25
    guidance_scale: float = 1.0
    cfg_dropout: float = 0.0  # probability of dropping the condition in training (classifier-free guidance)
    timestep_spacing: str = "trailing"  # the samplers' timestep subsequence (diffusers' timestep_spacing)
    steps_offset: int = 0  # added to "leading" timesteps (diffusers' steps_offset; Stable Diffusion uses 1)
    set_alpha_to_one: bool = True  # DDIM's last step ends at alpha_bar = 1 (False: at alpha_bar_0, as SD's config)
    hub_id: str | None = None  # a Hub repo in diffusers' layout that holds the weights (downloaded on build)
    layout: str = "zoo"  # "diffusers": saved as model_index.json + unet/ vae/ text_encoder/ tokenizer/ scheduler/
    variance: str = (
        "fixed_small"  # Sigma_theta: beta tilde, "fixed_large" beta, "learned" (2C U-Net outputs, iDDPM Eq. 15)
    )
    objective: str = "simple"  # training loss: L_simple (DDPM Eq. 14), "vlb" (the bound), "hybrid" (iDDPM Sec. 3.1)
    concat_image: str | None = None  # "inpaint": the mask and the masked image's latent concatenated to z_t
    # "low_res" only: the largest noise level s of the low-res image's augmentation q(x_s|x_0) in training, given to
    # the U-Net as a class label (SD x4 upscaler's max_noise_level, 350 there); 0: none (LDM Sec. 4.4 as it is)
    noise_augmentation: int = 0

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("kind", self.kind, PIPELINE_KINDS),
            ("prediction_type", self.prediction_type, PREDICTION_TYPES),
            ("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS),
            ("layout", self.layout, LAYOUTS),
            ("concat_image", self.concat_image, CONCAT_IMAGES),
        ):
            if value not in allowed:
                raise ValueError(f"recipe {self.name!r}: {field} must be one of {allowed}, got {value!r}")
        name = f"recipe {self.name!r}:"
        require_int(f"{name} steps_offset", self.steps_offset, minimum=0, maximum=MAX_TIMESTEPS)
        why = f"{MAX_IMAGE_SIZE}: SD draws 512 or 768; images are allocated at this side"
        require_int(f"{name} image_size", self.image_size, minimum=8, maximum=MAX_IMAGE_SIZE, why=why)
        require_int(f"{name} steps", self.steps, minimum=1, maximum=MAX_TIMESTEPS, why="the default sampling steps")
        require_number(f"{name} guidance_scale", self.guidance_scale, minimum=0.0)
        require_number(f"{name} cfg_dropout", self.cfg_dropout, minimum=0.0, maximum=1.0)
        why = "a noise level of the low-res image, at most the schedule's T"
        require_int(f"{name} noise_augmentation", self.noise_augmentation, minimum=0, maximum=MAX_TIMESTEPS, why=why)
        if self.noise_augmentation and self.concat_image != "low_res":
            raise ValueError(f'{name} noise_augmentation is for super-resolution (concat_image "low_res") only')
        for role in ROLES:
            part = getattr(self, role)
            if part is not None and not (isinstance(part, Part) and isinstance(part.name, str)):
                raise ArgumentTypeError(f"{name} {role} must be a Part(name, kwargs) with a string name, got {part!r}")
        try:
            check_objective(self.objective, self.variance)
            if self.schedule.kwargs.get("zero_terminal_snr") is True:  # Lin et al. 2024: v-prediction, trailing steps
                check_zero_terminal_snr_settings(self.prediction_type, self.timestep_spacing)
        except ValueError as error:
            raise ValueError(f"recipe {self.name!r}: {error}") from None
        if self.kind == "latent" and self.autoencoder is None:
            raise ValueError(f"recipe {self.name!r}: a latent pipeline needs an autoencoder")
        if self.kind == "pixel" and (self.autoencoder or self.conditioner or self.spatial or self.concat_image):
            raise ValueError(f"recipe {self.name!r}: the pixel pipeline is unconditional and has no autoencoder")

    @property
    def parts(self) -> dict[str, Part]:
        """The present parts by role: schedule, unet, and any of autoencoder, conditioner, spatial."""
        return {role: getattr(self, role) for role in ROLES if getattr(self, role) is not None}

    def replace(self, **changes: Any) -> Recipe:
        """A copy with top-level fields replaced; a dict for a part's role merges into that part's kwargs, a
        string names another registered part for that role with its defaults ({"schedule": "cosine"} in JSON)."""
        resolved = {}
        for key, value in changes.items():
            part = getattr(self, key, None) if key in self.parts else None
            if isinstance(value, str) and key in ROLES:
                value = Part(value, {})
            resolved[key] = part.with_kwargs(**value) if isinstance(value, Mapping) and part else value
        return dataclasses.replace(self, **resolved)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """A recipe from plain data: every required field present, none unknown, each part {"name", "kwargs"}."""
        if not isinstance(data, Mapping):
            raise ArgumentTypeError(f"a recipe is a JSON object of fields, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(fields)
        required = {name for name, f in fields.items() if f.default is dataclasses.MISSING}
        for what, names in (("unknown", unknown), ("missing", required - set(data))):
            if names:
                raise ValueError(f"{what} recipe fields {sorted(names)}; known: {sorted(fields)}")
        parts = {role: part_from_dict(role, data[role]) for role in ROLES if data.get(role) is not None}
        return cls(**{**data, **parts})

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        return cls.from_dict(json.loads(text))
