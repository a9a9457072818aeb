"""What is in the zoo: every component module (explicit imports) and every pipeline recipe.

`load()` imports the component modules, whose decorators fill the registries, then registers the
pipelines. It runs once, on the first `zoo.build` / `zoo.available`, so `import zoo` stays fast.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable

from zoo.data.shapes import SEG_PALETTE
from zoo.recipes import Part, Recipe
from zoo.registry import PIPELINES

LATENT_CHANNELS = 4
CONTEXT_DIM = 128  # width of the text/class tokens = the U-Net's cross-attention context width
NUM_CLASSES = 24  # the dataset's class label: shape kind x shape colour (zoo/data/shapes.py)
LOW_RES_CHANNELS = 3  # super-resolution's low-res RGB image (zoo/pipelines/super_resolution.py says the same)
NUM_SEG_LABELS = len(SEG_PALETTE)  # the dataset's semantic map: background + one label per shape kind
SEG = Part("seg", {"num_labels": NUM_SEG_LABELS, "palette": tuple(SEG_PALETTE[k] for k in range(NUM_SEG_LABELS))})

# The conditioning switch (LDM Fig. 3): which conditioner feeds which path into the U-Net.
CONDITIONINGS: dict[str, dict] = {
    "clip": {"conditioner": Part("clip", {"hidden_size": CONTEXT_DIM}), "about": "CLIP text tokens, cross-attention"},
    "bert": {"conditioner": Part("bert", {"hidden_size": CONTEXT_DIM}), "about": "BERT text tokens, cross-attention"},
    "class": {
        "conditioner": Part("class", {"num_classes": NUM_CLASSES, "dim": CONTEXT_DIM}),
        "about": "a class label token, cross-attention",
    },
    "seg": {"spatial": SEG, "about": "a semantic map, concatenated to z_t"},
    "clip+seg": {
        "conditioner": Part("clip", {"hidden_size": CONTEXT_DIM}),
        "spatial": SEG,
        "about": "CLIP text through cross-attention and a semantic map concatenated, at once",
    },
    "none": {"about": "unconditional"},
}
# Real checkpoints in diffusers' layout on the Hub (zoo/diffusers_layout.py), and their float32 download size
# (U-Net, VAE, text encoder safetensors; zoo.available() shows it).
HUB_MODELS: dict[str, dict] = {
    "sd-v1-5": {
        "hub_id": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "download": "about 4.3 GB",
        "about": "Stable Diffusion v1.5 (Rombach et al. 2022): 512x512, CLIP ViT-L/14 text tokens (768), eps",
        "unet": {"num_heads": 8, "num_head_channels": None, "context_dim": 768, "use_linear_projection": False},
        "text": {"hidden_size": 768, "num_layers": 12, "num_heads": 12},
    },
    "sd-2-1-base": {
        "hub_id": "stabilityai/stable-diffusion-2-1-base",
        "download": "about 5.2 GB",
        "about": "Stable Diffusion 2.1 base: 512x512, OpenCLIP ViT-H/14 text tokens (1024), eps",
        "unet": {"num_heads": None, "num_head_channels": 64, "context_dim": 1024, "use_linear_projection": True},
        "text": {"hidden_size": 1024, "num_layers": 23, "num_heads": 16},
    },
}
SD_UNET = dict(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_levels=(0, 1, 2))
SD_VAE = dict(base_channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2, latent_channels=4, norm_groups=32)
AUTOENCODER_KINDS = {"kl": "KL-regularised autoencoder", "vq": "VQ autoencoder"}
FACTORS = (4, 8)
LATENT_SCHEDULES = {"linear": "DDPM linear schedule", "cosine": "cosine schedule"}


_LOADED = threading.Event()
_LOCK = threading.Lock()


def load() -> None:
    """Import every component module (registering its parts), then register the pipelines. Idempotent and
    thread-safe: the app may build pipelines from several threads at once."""
    if _LOADED.is_set():
        return
    with _LOCK:
        if not _LOADED.is_set():
            _register()
            _LOADED.set()


def _register() -> None:
    import components.autoencoders.kl  # noqa: F401
    import components.autoencoders.vq  # noqa: F401
    import components.conditioners.bert  # noqa: F401
    import components.conditioners.class_label  # noqa: F401
    import components.conditioners.clip  # noqa: F401
    import components.conditioners.spatial  # noqa: F401
    import components.samplers.ddim  # noqa: F401
    import components.samplers.ddpm  # noqa: F401
    import components.samplers.dpmpp  # noqa: F401
    import components.schedulers.cosine  # noqa: F401
    import components.schedulers.linear  # noqa: F401
    import components.schedulers.scaled_linear  # noqa: F401
    import components.unets.unet  # noqa: F401

    for schedule in ("linear", "cosine"):
        PIPELINES.add(f"ddpm-{schedule}", functools.partial(pixel_recipe, schedule), description=pixel_about(schedule))
    for objective, spec in LOSS_STUDY.items():
        name = loss_study_name(objective)
        PIPELINES.add(name, functools.partial(loss_study_recipe, objective), description=spec["about"])
    for name, spec in HUB_MODELS.items():
        PIPELINES.add(name, functools.partial(hub_recipe, name), description=spec["about"])
    PIPELINES.add("ldm-inpaint-kl", inpaint_recipe, description=INPAINT_ABOUT)
    PIPELINES.add("ldm-sr-kl", sr_recipe, description=SR_ABOUT)
    for cond, ae, factor, schedule in itertools.product(CONDITIONINGS, AUTOENCODER_KINDS, FACTORS, LATENT_SCHEDULES):
        name = latent_name(cond, ae, factor, schedule)
        about = f"latent diffusion: {CONDITIONINGS[cond]['about']}; {AUTOENCODER_KINDS[ae]} f{factor}; "
        factory = functools.partial(latent_recipe, cond, ae, factor, schedule)
        PIPELINES.add(
            name,
            functools.partial(fast_default, factory, name) if name in FAST_DEFAULTS else factory,
            description=about + LATENT_SCHEDULES[schedule],
        )


def pixel_about(schedule: str) -> str:
    return f"pixel-space DDPM, unconditional, 64x64, {schedule} schedule"


def pixel_recipe(schedule: str) -> Recipe:
    return Recipe(
        name=f"ddpm-{schedule}",
        description=pixel_about(schedule),
        kind="pixel",
        schedule=Part(schedule),
        unet=Part("unet-ddpm", {"in_channels": 3, "out_channels": 3}),
        sampler="ddpm",  # DDPM Alg. 2, respaced: sharper than DDIM for these models (README, Evaluation)
        steps=50,
    )


# The loss study (issue 15; README "L_simple vs the bound"): one small 32x32 pixel model, cosine schedule (as
# improved DDPM), trained with each objective for the same CPU budget. The name carries the objective.
LOSS_STUDY: dict[str, dict] = {
    "simple": {"variance": "fixed_small", "about": "L_simple (DDPM Eq. 14), fixed variance beta tilde"},
    "hybrid": {"variance": "learned", "about": "L_simple + 0.001 L_vlb, learned variance (improved DDPM Sec. 3.1)"},
    "vlb": {
        "variance": "learned",
        "about": "the bound L_vlb, importance-sampled t, learned variance (iDDPM Sec. 3.3)",
    },
}


def loss_study_name(objective: str) -> str:
    return f"ddpm-{objective}-32"


def loss_study_recipe(objective: str) -> Recipe:
    spec = LOSS_STUDY[objective]
    name = loss_study_name(objective)
    return Recipe(
        name=name,
        description=f"pixel-space DDPM, unconditional, 32x32, cosine schedule: {spec['about']}",
        kind="pixel",
        schedule=Part("cosine"),
        unet=Part("unet-ddpm-32", {"in_channels": 3, "out_channels": 6 if spec["variance"] == "learned" else 3}),
        image_size=32,
        sampler="ddpm",
        steps=50,
        variance=spec["variance"],
        objective=objective,
    )


def latent_name(cond: str, ae: str, factor: int, schedule: str) -> str:
    """ldm-<conditioner>-<autoencoder>[-f8][-cosine]: f4 and the linear schedule are the defaults."""
    return (
        f"ldm-{cond}-{ae}" + ("" if factor == 4 else f"-f{factor}") + ("" if schedule == "linear" else f"-{schedule}")
    )


# Issue 9: the fastest sampler that keeps a model's quality is its default. DPM-Solver++ at 15 steps (Lu et al. 2022)
# draws in 0.28 s against DDPM 25's 0.43 s (python -m zoo.bench generate) and, measured with `python -m
# zoo.evaluate NAME --prompts 48 --sampler dpmpp --steps 15 --threads 1` against the DDPM 25 figures (README,
# "Evaluation"), reads within one image of 96 of DDPM 25 on these three (all-correct seen / held-out, DDPM 25 ->
# DPM-Solver++ 15): ldm-clip-kl 96% / 83% -> 94% / 83%, ldm-bert-kl 90% / 88% -> 94% / 85%, ldm-bert-vq 85% / 71% ->
# 85% / 71%. Not then on ldm-clip-vq (81% / 71% -> 75% / 62%) nor ldm-class-kl (92% -> 81%); both joined in session 7
# with retrained U-Nets (96 prompts a split; ldm-class-kl from the text model's U-Net, class right: DDPM 25 97%,
# DPM-Solver++ 15 99%; ldm-clip-vq 4,839 more steps: DDPM 25 92% / 72%, DPM-Solver++ 15 91% / 78%). ldm-inpaint-kl
# joined in session 12, retrained from the session-11 root (the shape read inside the mask, 48 seen-pair prompts:
# DDPM 25 96%, DPM-Solver++ 15 96%).
# Since session 14 ldm-class-kl (the plan's, from the session-11 root) samples with DDPM at the same 15 steps (the same
# 15 U-Net calls, no faster or slower): class right on 96 prompts DDPM 15 98% against DPM-Solver++ 15's 94% (clean
# 0.947 against 0.911), and the same order in sessions 12 (98% / 95%) and 13 (98% / 94%).
FAST_DEFAULT = ("dpmpp", 15)
FAST_DEFAULTS = {
    **dict.fromkeys(("ldm-clip-kl", "ldm-bert-kl", "ldm-bert-vq", "ldm-clip-vq", "ldm-inpaint-kl"), FAST_DEFAULT),
    "ldm-class-kl": ("ddpm", 15),
}


def fast_default(factory: Callable[[], Recipe], name: str) -> Recipe:
    """The recipe `factory` builds, sampling as FAST_DEFAULTS says for `name` (one of its keys)."""
    sampler, steps = FAST_DEFAULTS[name]
    return factory().replace(sampler=sampler, steps=steps)


def latent_recipe(cond: str, ae: str, factor: int, schedule: str) -> Recipe:
    spec = CONDITIONINGS[cond]
    conditioner, spatial = spec.get("conditioner"), spec.get("spatial")
    unet = {
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "context_dim": CONTEXT_DIM if conditioner else None,
        "concat_channels": NUM_SEG_LABELS if spatial else 0,
    }
    if factor == 8:  # 8x8 latents: two levels are enough
        unet["channel_mult"] = (1, 2)
    name = latent_name(cond, ae, factor, schedule)
    return Recipe(
        name=name,
        description=PIPELINES.describe().get(name, ""),
        kind="latent",
        schedule=Part(schedule),
        unet=Part("unet-ldm", unet),
        autoencoder=Part(f"{ae}-f{factor}", {"latent_channels": LATENT_CHANNELS}),
        conditioner=conditioner,
        spatial=spatial.with_kwargs(downsample_factor=factor) if spatial else None,
        # v-prediction (Salimans & Ho 2022): with eps-prediction the x_0 read off the first, near-pure-noise
        # steps amplifies the network's error by 1/sqrt(alpha_bar) (~160 at t = T for the linear schedule), and
        # the deterministic samplers drew textured non-images on some seeds; fine-tuning to v fixed it (README,
        # "Recipes that converge on this CPU").
        prediction_type="v",
        sampler="ddpm",  # FAST_DEFAULTS' pipelines get theirs where they are registered (fast_default)
        steps=25,
        guidance_scale=3.0 if cond != "none" else 1.0,
        cfg_dropout=0.1 if cond != "none" else 0.0,
    )


INPAINT_ABOUT = (
    "latent diffusion, trained to inpaint: z_t + the mask + the masked image's latent concatenated (SD inpainting's "
    "design), CLIP text tokens through cross-attention; KL f4"
)


def inpaint_recipe() -> Recipe:
    """ldm-clip-kl's parts with 5 more U-Net inputs: the mask at latent resolution and the masked image's latent
    (1 + 4 channels, diffusers' order), trained on random box and brush-stroke masks (zoo/data/masks.py)."""
    base = latent_recipe("clip", "kl", 4, "linear")
    unet = base.unet.with_kwargs(concat_channels=1 + LATENT_CHANNELS)
    return base.replace(name="ldm-inpaint-kl", description=INPAINT_ABOUT, unet=unet, concat_image="inpaint")


SR_ABOUT = (
    "latent diffusion super-resolution (LDM Sec. 4.4): the 16x16 low-res image concatenated to z_t, tau = identity; "
    "64x64 out; KL f4"
)
SR_MAX_NOISE_LEVEL = 350  # the SD x4 upscaler's max_noise_level, for sr_recipe(noise_augmentation=...)


def sr_recipe(noise_augmentation: int = 0) -> Recipe:
    """ldm-clip-kl's parts with 3 more U-Net inputs, the low-res RGB image at latent resolution (16x16 for f4),
    so a trained text model's U-Net warm-starts it (zoo/train/stages.py `widened`). Its cross-attention always
    sees the CLIP tower's tokens of the empty prompt, a constant: the null condition the text model learned under
    condition dropout, so the warm start begins as the text model's unconditional branch. No guidance (the
    low-res image is never dropped in training). noise_augmentation > 0: the SD x4 upscaler's noise level as
    a class label (zoo/pipelines/super_resolution.py), num_classes = noise_augmentation + 1."""
    base = latent_recipe("clip", "kl", 4, "linear")
    unet = {"concat_channels": LOW_RES_CHANNELS}
    if noise_augmentation:  # one class embedding per noise level 0..noise_augmentation
        unet["num_classes"] = noise_augmentation + 1
    return base.replace(
        name="ldm-sr-kl",
        description=SR_ABOUT,
        unet=unet,
        concat_image="low_res",
        noise_augmentation=noise_augmentation,
        guidance_scale=1.0,
        cfg_dropout=0.0,
    )


def hub_recipe(name: str) -> Recipe:
    """A Stable Diffusion checkpoint's recipe: its architecture (as the checkpoint's configs give it), the
    scaled-linear schedule with steps offset 1 and "leading" spacing, diffusers' sampling defaults."""
    spec = HUB_MODELS[name]
    text = {**spec["text"], "max_length": 77, "vocab_size": 49408}
    return Recipe(
        name=name,
        description=spec["about"],
        kind="latent",
        schedule=Part("scaled-linear", {"num_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012}),
        unet=Part(
            "unet-ldm", {**SD_UNET, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, **spec["unet"]}
        ),
        autoencoder=Part("kl-f8", SD_VAE),
        conditioner=Part("clip", text),
        image_size=512,
        sampler="ddim",
        steps=50,
        guidance_scale=7.5,
        timestep_spacing="leading",
        steps_offset=1,
        hub_id=spec["hub_id"],
        layout="diffusers",
    )
