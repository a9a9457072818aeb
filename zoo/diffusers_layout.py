"""Stable Diffusion checkpoints in diffusers' folder layout, read into the zoo's own components (and written back).

A file format only: `read_diffusers` returns (recipe, parts) and `write_diffusers` writes a pipeline's parts;
zoo/pipeline_io.py chooses the layout and zoo/assembly.py makes the pipeline.

The layout (what diffusers' StableDiffusionPipeline.save_pretrained writes, and what Hub repos such as
stable-diffusion-v1-5/stable-diffusion-v1-5 hold):

    model_index.json                       which class sits in each subfolder
    unet/config.json + diffusion_pytorch_model[.fp16].safetensors   -> components.unets.unet.UNet
    vae/config.json + diffusion_pytorch_model[.fp16].safetensors    -> components.autoencoders.kl.AutoencoderKL
    text_encoder/config.json + model[.fp16].safetensors, tokenizer/ -> a CLIP text conditioner (transformers)
    scheduler/scheduler_config.json        -> the noise schedule, prediction type, timestep spacing, steps offset

Weights are read from safetensors only (never a pickle: a .bin-only checkpoint is refused), and keys are
renamed by the components' diffusers_compat modules, so a key that does not map is an error that names it.
Latent diffusion: Rombach et al. 2022; v-prediction (SD 2.x): Salimans & Ho 2022.
"""

from __future__ import annotations

import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, CLIPTextModel

from components.autoencoders import diffusers_compat as vae_compat
from components.autoencoders.kl import AutoencoderKL, AutoencoderKLConfig
from components.base import WeightsError, hub_blocked, hub_snapshot, is_local
from components.conditioners.clip import CLIPTextConditioner
from components.unets import diffusers_compat as unet_compat
from components.unets.unet import UNet
from zoo.recipes import Part, Recipe
from zoo.registry import AUTOENCODERS, SCHEDULES

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
# The layouts read: text-to-image and image-to-image share one (the img2img class only names another pipeline);
# the inpainting one differs in its U-Net, whose 9 inputs are z_t, the mask and the masked image's latent.
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
INPAINT_CLASS = "StableDiffusionInpaintPipeline"
MODEL_WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
DIFFUSERS_PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}  # diffusers' name -> ours
BETA_SCHEDULES = {"scaled_linear": "scaled-linear", "linear": "linear"}  # diffusers' name -> our schedule
# Scheduler options that change the process itself: the values under which our schedules and samplers agree.
SCHEDULER_NO_OPS = {"trained_betas": (None,), "thresholding": (False,)}
DEFAULTS = {"sampler": "ddim", "steps": 50, "guidance_scale": 7.5}  # diffusers' StableDiffusionPipeline defaults


class DiffusersLayoutError(WeightsError):
    """A folder or Hub repo that is not a supported diffusers layout; the message names the file and the fix."""


class UnmaskedCLIPTextConditioner(CLIPTextConditioner):
    """CLIP text tokens as Stable Diffusion computes them: no padding mask, in the text encoder or the U-Net.

    SD was trained so (CompVis' FrozenCLIPEmbedder; diffusers' StableDiffusionPipeline passes no attention mask
    unless the text encoder's config sets use_attention_mask): padding tokens are context too.
    """

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids=input_ids).last_hidden_state  # causal mask only

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = super().forward(texts)
        return tokens, torch.ones_like(mask)  # every position is attended to


# ------------------------------------------------------------------------------------------- finding files
def holds_model_index(source: str | Path) -> bool:
    """True for a local folder with model_index.json, or a Hub repo that has one (a small download; offline or
    with the Hub unreachable, the local cache is asked only)."""
    local = Path(source)
    if local.is_dir() or is_local(source):  # a missing local folder is never looked up on the Hub
        return (local / MODEL_INDEX).is_file()
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    if hub_blocked():
        return isinstance(try_to_load_from_cache(str(source), MODEL_INDEX), str)
    try:
        hf_hub_download(str(source), MODEL_INDEX)
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
        return False
    return True


def hub_patterns(variant: str | None = None) -> list[str]:
    """What a download fetches: configs, the tokenizer and the safetensors of the four parts, nothing else
    (no pickles, no single-file checkpoints, no safety checker)."""
    suffix = f".{variant}" if variant else ""
    weights = [f"{folder}/{stem}{suffix}.safetensors" for folder, stem in MODEL_WEIGHTS.items()]
    configs = [f"{folder}/config.json" for folder in MODEL_WEIGHTS]
    return [MODEL_INDEX, "scheduler/*.json", "tokenizer/*.json", "tokenizer/*.txt", *configs, *weights]


def is_cached(repo_id: str, variant: str | None = None) -> bool:
    """True when the Hub repo's U-Net weights are already in the local huggingface_hub cache."""
    from huggingface_hub import try_to_load_from_cache

    suffix = f".{variant}" if variant else ""
    found = try_to_load_from_cache(repo_id, f"unet/{MODEL_WEIGHTS['unet']}{suffix}.safetensors")
    return isinstance(found, str)


def download(repo_id: str, *, variant: str | None = None, **hub_kwargs: Any) -> Path:
    """The repo's diffusers layout through huggingface_hub (cached); a clear error at once when offline or
    unreachable and not in the cache (components.base.hub_snapshot)."""
    return hub_snapshot(repo_id, DiffusersLayoutError, allow_patterns=hub_patterns(variant), **hub_kwargs)


def resolve(source: str | Path, *, variant: str | None = None, **hub_kwargs: Any) -> Path:
    """A local folder with model_index.json, or a Hub repo id downloaded into the cache."""
    local = Path(source)
    if local.is_dir() or str(source).startswith((".", "/")):
        read_json(local / MODEL_INDEX, "the pipeline's index")
        return local
    return download(str(source), variant=variant, **hub_kwargs)


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DiffusersLayoutError(f"missing {path} ({what}): a diffusers pipeline folder holds {MODEL_INDEX}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DiffusersLayoutError(f"{path} ({what}) is not valid JSON: {err}") from err


def check_model_index(root: Path) -> dict[str, Any]:
    """model_index.json of a supported pipeline class, with the parts we load."""
    index = read_json(root / MODEL_INDEX, "the pipeline's index")
    if index.get("_class_name") not in PIPELINE_CLASSES:
        raise DiffusersLayoutError(
            f"{root / MODEL_INDEX} describes a {index.get('_class_name')!r}; supported: {', '.join(PIPELINE_CLASSES)}"
        )
    missing = [part for part in (*MODEL_WEIGHTS, "tokenizer", "scheduler") if not (index.get(part) or [None])[0]]
    if missing:
        raise DiffusersLayoutError(f"{root / MODEL_INDEX} has no {', '.join(missing)}: the zoo needs all five parts")
    return index


def weights_file(folder: Path, stem: str, variant: str | None) -> Path:
    """folder/<stem>[.variant].safetensors; a pickle-only folder is refused, naming the file."""
    path = folder / f"{stem}{f'.{variant}' if variant else ''}.safetensors"
    if path.is_file():
        return path
    pickles = sorted(p.name for p in folder.glob(f"{stem}*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise DiffusersLayoutError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}), which the zoo never loads (unpickling runs "
            f"code): convert them to {path.name} (e.g. with diffusers' save_pretrained(safe_serialization=True))"
        )
    raise DiffusersLayoutError(f"missing {path}: the {folder.name} weights (safetensors) are not there")


# ------------------------------------------------------------------------------------------- the parts
def load_unet(folder: Path, variant: str | None = None, inpainting: bool = False) -> UNet:
    """diffusers' UNet2DConditionModel (config + weights) -> our UNet, strictly (every key maps, none missing);
    an inpainting U-Net's inputs beyond its outputs (z_t) are its concatenated mask and masked image's latent."""
    config_file, file = folder / "config.json", weights_file(folder, MODEL_WEIGHTS["unet"], variant)
    config = read_json(config_file, "the U-Net's config")
    concat = config.get("in_channels", 4) - config.get("out_channels", 4) if inpainting else 0
    try:
        model = UNet(unet_compat.config_from_diffusers(config, concat_channels=concat))
    except ValueError as err:
        raise DiffusersLayoutError(f"{config_file}: {err}") from err
    return load_strict(model, unet_compat.state_dict_from_diffusers, file)


def load_vae(folder: Path, variant: str | None = None) -> AutoencoderKL:
    """diffusers' AutoencoderKL (config + weights) -> ours, with its scaling factor (LDM Sec. 4.3.2)."""
    config_file, file = folder / "config.json", weights_file(folder, MODEL_WEIGHTS["vae"], variant)
    try:
        config = AutoencoderKLConfig(**vae_compat.config_from_diffusers(read_json(config_file, "the VAE's config")))
    except ValueError as err:
        raise DiffusersLayoutError(f"{config_file}: {err}") from err
    return load_strict(AutoencoderKL(config), vae_compat.state_dict_from_diffusers, file)


def load_strict(model: torch.nn.Module, rename: Any, file: Path) -> Any:
    """The safetensors file, keys renamed, loaded with strict=True; an unmappable or missing key names the file."""
    try:
        model.load_state_dict(rename(load_file(file)), strict=True)
    except (ValueError, RuntimeError) as err:
        raise DiffusersLayoutError(f"cannot load {file} into {type(model).__name__}: {err}") from err
    return model.eval()


def load_text_encoder(root: Path, variant: str | None = None) -> UnmaskedCLIPTextConditioner:
    """text_encoder/ (transformers CLIPTextModel, safetensors) + tokenizer/, called as Stable Diffusion calls it."""
    folder = root / "text_encoder"
    weights_file(folder, MODEL_WEIGHTS["text_encoder"], variant)  # refuses pickles before transformers looks
    try:
        text_model = CLIPTextModel.from_pretrained(folder, variant=variant, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    except (OSError, ValueError) as err:
        where = f"{folder} and {root / 'tokenizer'}"
        raise DiffusersLayoutError(f"cannot load the CLIP text encoder from {where}: {err}") from err
    return UnmaskedCLIPTextConditioner(text_model, tokenizer).eval()


def scheduler_settings(root: Path) -> dict[str, Any]:
    """scheduler_config.json -> our schedule part, prediction type, timestep spacing and steps offset."""
    path = root / "scheduler" / "scheduler_config.json"
    config = read_json(path, "the scheduler's config")
    for key, allowed in SCHEDULER_NO_OPS.items():
        if config.get(key, allowed[0]) not in allowed:
            raise DiffusersLayoutError(f"{path}: {key}={config[key]!r} is not supported (only {allowed[0]!r})")
    beta_schedule = config.get("beta_schedule", "linear")
    prediction = config.get("prediction_type", "epsilon")
    if beta_schedule not in BETA_SCHEDULES or prediction not in DIFFUSERS_PREDICTION_TYPES:
        raise DiffusersLayoutError(
            f"{path}: beta_schedule={beta_schedule!r}, prediction_type={prediction!r}; supported: beta_schedule in "
            f"{sorted(BETA_SCHEDULES)}, prediction_type in {sorted(DIFFUSERS_PREDICTION_TYPES)}"
        )
    if beta_schedule == "linear" and config.get("num_train_timesteps", 1000) != 1000:
        raise DiffusersLayoutError(f"{path}: a 'linear' beta_schedule needs num_train_timesteps=1000 (ours rescales)")
    kwargs = {"num_timesteps": config.get("num_train_timesteps", 1000)}
    kwargs.update({k: config[k] for k in ("beta_start", "beta_end") if k in config})
    if config.get("rescale_betas_zero_snr", False):  # Lin et al. 2024 Alg. 1, our schedules' zero_terminal_snr
        kwargs["zero_terminal_snr"] = True
    return {
        "schedule": Part(BETA_SCHEDULES[beta_schedule], kwargs),
        "prediction_type": DIFFUSERS_PREDICTION_TYPES[prediction],
        "timestep_spacing": config.get("timestep_spacing", "leading"),
        "steps_offset": config.get("steps_offset", 0),
        "set_alpha_to_one": bool(config.get("set_alpha_to_one", True)),
    }


# ------------------------------------------------------------------------------------------- the pipeline
def read_diffusers(
    source: str | Path,
    *,
    name: str | None = None,
    variant: str | None = None,
    **hub_kwargs: Any,
) -> tuple[Recipe, dict[str, Any]]:
    """A StableDiffusionPipeline folder (or Hub repo id) as a recipe and the zoo's own components, loaded;
    zoo.assembly.assemble checks they fit and makes the pipeline."""
    root = resolve(source, variant=variant, **hub_kwargs)
    index = check_model_index(root)
    settings = scheduler_settings(root)
    parts = {
        "schedule": SCHEDULES.build(settings["schedule"].name, **settings["schedule"].kwargs),
        "unet": load_unet(root / "unet", variant, inpainting=index["_class_name"] == INPAINT_CLASS),
        "autoencoder": load_vae(root / "vae", variant),
        "conditioner": load_text_encoder(root, variant),
    }
    settings["concat_image"] = "inpaint" if index["_class_name"] == INPAINT_CLASS else None
    chosen = recipe_for(root, source, name, parts, settings)
    logger.info("read %s from %s (diffusers layout)", chosen.name, root)
    return chosen, parts


def recipe_for(root: Path, source: str | Path, name: str | None, parts: dict, settings: dict) -> Recipe:
    """The loaded pipeline as a recipe: the checkpoint's architecture as part kwargs, SD's sampling defaults
    (or those of a recipe.json saved next to the layout by save_diffusers)."""
    unet, vae, text = parts["unet"], parts["autoencoder"], parts["conditioner"].text_model.config
    saved = json.loads((root / "recipe.json").read_text()) if (root / "recipe.json").is_file() else {}
    factor = vae.downsample_factor
    sample_size = read_json(root / "unet" / "config.json", "the U-Net's config").get("sample_size", 64)
    defaults = {"image_size": sample_size * factor, **DEFAULTS}
    defaults.update({k: saved[k] for k in (*defaults, "description") if k in saved})
    name = name or saved.get("name") or Path(str(source)).name
    return Recipe(
        name=name,
        description=defaults.pop("description", f"Stable Diffusion checkpoint {source} (diffusers layout)"),
        kind="latent",
        schedule=settings["schedule"],
        unet=Part("unet-ldm", unet.config.to_dict()),
        autoencoder=Part(f"kl-f{factor}" if f"kl-f{factor}" in AUTOENCODERS else "kl-f8", vae.config.to_dict()),
        conditioner=Part("clip", clip_kwargs(text)),
        prediction_type=settings["prediction_type"],
        timestep_spacing=settings["timestep_spacing"],
        steps_offset=settings["steps_offset"],
        set_alpha_to_one=settings["set_alpha_to_one"],
        concat_image=settings["concat_image"],
        hub_id=None if Path(str(source)).is_dir() else str(source),
        layout="diffusers",
        **defaults,
    )


def clip_kwargs(text_config: Any) -> dict[str, int]:
    """The `clip` conditioner's keyword arguments that describe a transformers CLIPTextConfig."""
    return {
        "hidden_size": text_config.hidden_size,
        "num_layers": text_config.num_hidden_layers,
        "num_heads": text_config.num_attention_heads,
        "max_length": text_config.max_position_embeddings,
        "vocab_size": text_config.vocab_size,
        "mlp_ratio": text_config.intermediate_size // text_config.hidden_size,
    }


# ------------------------------------------------------------------------------------------- writing
def write_diffusers(pipeline: Any, folder: str | Path) -> Path:
    """Write `pipeline` in diffusers' StableDiffusionPipeline layout (loadable by diffusers and by zoo.build),
    plus recipe.json with the zoo's sampling defaults. Needs SD's unmasked CLIP conditioner and a KL autoencoder:
    a zoo-trained CLIP conditioner masks padding, which diffusers' pipeline does not, so its images would differ."""
    check_exportable(pipeline)
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    sample_size = pipeline.recipe.image_size // pipeline.autoencoder.downsample_factor  # diffusers' default size
    unet_config = {**unet_compat.config_to_diffusers(pipeline.unet.config), "sample_size": sample_size}
    write_part(root / "unet", unet_config, "UNet2DConditionModel")
    save_file(unet_to_diffusers(pipeline.unet), str(root / "unet" / f"{MODEL_WEIGHTS['unet']}.safetensors"))
    write_part(root / "vae", vae_config_to_diffusers(pipeline.autoencoder.config), "AutoencoderKL")
    save_file(vae_to_diffusers(pipeline.autoencoder), str(root / "vae" / f"{MODEL_WEIGHTS['vae']}.safetensors"))
    pipeline.conditioner.text_model.save_pretrained(root / "text_encoder")
    pipeline.conditioner.tokenizer.save_pretrained(root / "tokenizer")
    write_part(root / "scheduler", scheduler_config(pipeline), "DDIMScheduler", "scheduler_config.json")
    (root / MODEL_INDEX).write_text(json.dumps(model_index(pipeline), indent=2))
    (root / "recipe.json").write_text(pipeline.recipe.to_json())
    return root


def check_exportable(pipeline: Any) -> None:
    if pipeline.recipe.kind != "latent" or not isinstance(pipeline.conditioner, UnmaskedCLIPTextConditioner):
        raise ValueError(
            "only a pipeline with Stable Diffusion's unmasked CLIP text encoder (loaded from a diffusers layout) "
            "saves in diffusers' layout; save others with the zoo's layout (recipe layout='zoo')"
        )
    if not isinstance(pipeline.autoencoder, AutoencoderKL) or pipeline.spatial is not None:
        raise ValueError("diffusers' StableDiffusionPipeline has a KL autoencoder and no concatenated map")


def write_part(folder: Path, config: dict, class_name: str, file: str = "config.json") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    header = {"_class_name": class_name, "_diffusers_version": diffusers_version()}
    (folder / file).write_text(json.dumps({**header, **config}, indent=2))


def diffusers_version() -> str:
    """The installed diffusers' version for the configs' _diffusers_version (metadata only, no import)."""
    try:
        return metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        return "0.30.0"


def contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def unet_to_diffusers(unet: UNet) -> dict[str, torch.Tensor]:
    """Our U-Net's state dict with diffusers' key names: the inverse of unet_compat.rename_key, checked on
    every key (renaming back must give the key we started from)."""
    return invert(unet.state_dict(), UNET_INVERSE, unet_compat.rename_key)


def vae_to_diffusers(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """Our AutoencoderKL's state dict with diffusers' key names (linear attention weights, as diffusers keeps)."""
    return invert(vae.state_dict(), VAE_INVERSE, vae_compat.rename_key)


# (our key pattern, diffusers' replacement), applied in order with re.sub; rename_key verifies the result.
UNET_INVERSE = [
    (r"^norm_out\.", "conv_norm_out."),
    (r"^time_mlp\.", "time_embedding."),
    (r"^mid_block\.attention\.", "mid_block.attentions.0."),
    (r"\.resnets\.(\d+)\.time_proj\.", r".resnets.\1.time_emb_proj."),
    (r"\.resnets\.(\d+)\.skip\.", r".resnets.\1.conv_shortcut."),
    (r"\.downsample\.conv\.", ".downsamplers.0.conv."),
    (r"\.upsample\.conv\.", ".upsamplers.0.conv."),
    (r"\.blocks\.(\d+)\.", r".transformer_blocks.\1."),
    (r"\.to_out\.(weight|bias)$", r".to_out.0.\1"),
    (r"\.ff\.proj_in\.", ".ff.net.0.proj."),
    (r"\.ff\.proj_out\.", ".ff.net.2."),
]
VAE_INVERSE = [
    (r"\.norm_out\.", ".conv_norm_out."),
    (r"^encoder\.down\.(\d+)\.", r"encoder.down_blocks.\1."),
    (r"^decoder\.up\.(\d+)\.", r"decoder.up_blocks.\1."),
    (r"\.res\.(\d+)\.", r".resnets.\1."),
    (r"\.resample\.conv\.", ".downsamplers.0.conv."),
    (r"\.mid\.res1\.", ".mid_block.resnets.0."),
    (r"\.mid\.res2\.", ".mid_block.resnets.1."),
    (r"\.mid\.attn\.norm\.", ".mid_block.attentions.0.group_norm."),
    (r"\.mid\.attn\.([qkv])\.", r".mid_block.attentions.0.to_\1."),
    (r"\.mid\.attn\.proj\.", ".mid_block.attentions.0.to_out.0."),
    (r"\.skip\.", ".conv_shortcut."),
]


def invert(sd: dict[str, torch.Tensor], rules: list[tuple[str, str]], rename: Any) -> dict[str, torch.Tensor]:
    import re

    out = {}
    for key, value in contiguous(sd).items():
        theirs = key
        for pattern, replacement in rules:
            theirs = re.sub(pattern, replacement, theirs)
        if theirs.startswith("decoder."):
            theirs = theirs.replace(".downsamplers.0.", ".upsamplers.0.")
        if rename(theirs) != key:
            raise ValueError(f"no diffusers name for {key!r} (tried {theirs!r})")
        out[theirs] = value
    return out


def vae_config_to_diffusers(config: AutoencoderKLConfig) -> dict[str, Any]:
    """The diffusers AutoencoderKL config of the same network (the inverse of vae_compat.config_from_diffusers)."""
    levels = len(config.channel_mult)
    return {
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [config.base_channels * m for m in config.channel_mult],
        "layers_per_block": config.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": config.latent_channels,
        "norm_num_groups": config.norm_groups,
        "scaling_factor": config.scaling_factor,
        "mid_block_add_attention": config.mid_attention,
    }


def scheduler_config(pipeline: Any) -> dict[str, Any]:
    """A DDIMScheduler config of the pipeline's schedule (its first and last beta, before a zero-terminal-SNR
    rescale, which diffusers applies itself: rescale_betas_zero_snr) and sampling settings."""
    names = {ours: theirs for theirs, ours in BETA_SCHEDULES.items()}
    predictions = {ours: theirs for theirs, ours in DIFFUSERS_PREDICTION_TYPES.items()}
    recipe, zero_terminal_snr = pipeline.recipe, pipeline.schedule.zero_terminal_snr
    if recipe.schedule.name not in names:
        raise ValueError(f"the {recipe.schedule.name!r} schedule has no diffusers beta_schedule ({sorted(names)})")
    betas = pipeline.schedule.betas
    if zero_terminal_snr:  # the betas diffusers rescales: the same schedule without the rescale
        betas = SCHEDULES.build(recipe.schedule.name, **{**recipe.schedule.kwargs, "zero_terminal_snr": False}).betas
    return {
        "num_train_timesteps": pipeline.schedule.num_timesteps,
        "beta_start": float(betas[0]),
        "beta_end": float(betas[-1]),
        "beta_schedule": names[recipe.schedule.name],
        "prediction_type": predictions[recipe.prediction_type],
        "timestep_spacing": recipe.timestep_spacing,
        "steps_offset": recipe.steps_offset,
        "clip_sample": False,
        "set_alpha_to_one": recipe.set_alpha_to_one,
        **({"rescale_betas_zero_snr": True} if zero_terminal_snr else {}),  # written only when set
    }


def model_index(pipeline: Any) -> dict[str, Any]:
    return {
        "_class_name": INPAINT_CLASS if pipeline.recipe.concat_image == "inpaint" else PIPELINE_CLASSES[0],
        "_diffusers_version": diffusers_version(),
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", type(pipeline.conditioner.text_model).__name__],
        "tokenizer": ["transformers", type(pipeline.conditioner.tokenizer).__name__],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
    }
