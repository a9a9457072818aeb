"""`python -m zoo.evaluate <name>`: how well a pipeline does what it is asked, measured from pixels.

    python -m zoo.evaluate ldm-clip-kl                 # the embedded weights
    python -m zoo.evaluate ldm-clip-kl --save          # also writes zoo/weights/<name>/evaluation.json

Prompt adherence: images generated from fixed captions (seen and held-out colour-shape pairs, separately)
are read back by the pixel analyser (zoo/data/analyser.py) and compared with what the caption names.
Also: reconstruction PSNR and VQ codebook usage of the autoencoder on held-out images, the CLIP model's
zero-shot accuracy, bits/dim of pixel models from the variational bound, and the time per image; with
`--inpainting`, inpainting; with `--img2img [--strengths ...]`, image-to-image (SDEdit) at each strength.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import zoo
from zoo.build import embedded_weights
from zoo.data.analyser import ATTRIBUTES, accuracy_table, analyse, clean_fraction, shape_mask, template_iou
from zoo.data.shapes import Attributes, eval_prompts, pregenerate, render
from zoo.pipelines.editing import check_strength
from zoo.pipelines.repaint import RePaint
from zoo.train.stages import psnr, zero_shot_on

logger = logging.getLogger(__name__)
CLIP_FOLDER = Path(__file__).parent / "weights" / "clip-shapes"


SHAPE_IOU = 0.85  # a shape counts as drawn only when the wanted shape's template fits the mask this well
AGREEMENT_IOU = 0.8  # two images of one seed agree when they read the same and their masks overlap this much
SAMPLERS = ("ddpm", "ddim", "dpmpp")


def jobs(pipe: Any, split: str, n: int, seed: int = 0) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(generate kwargs, wanted attributes) for the `n` evaluation prompts of `split` ("seen" / "heldout")."""
    kind = condition_kind(pipe)
    result = []
    for k, (caption, wanted) in enumerate(eval_prompts(split, n=n, seed=seed)):
        kwargs: dict[str, Any] = {"seed": seed + k}
        named = {f: getattr(wanted, f) for f in ATTRIBUTES if getattr(wanted, f) is not None}
        if kind == "text":
            kwargs["prompt"] = caption
        elif kind == "class":  # the label fixes shape and colour; the rest is free
            kwargs["prompt"] = wanted.class_label
            named = {"shape": wanted.shape, "colour": wanted.colour}
        elif kind == "seg":  # the map fixes shape, size and position; colours are free
            full = Attributes(
                wanted.shape, wanted.colour, wanted.background, wanted.size or "large", wanted.position or "center"
            )
            kwargs["semantic_map"] = torch.from_numpy(render(full)[1])
            named = {"shape": full.shape, "size": full.size, "position": full.position}
        result.append((kwargs, named))
    return result


def draw(pipe: Any, todo: list[tuple[dict[str, Any], dict[str, str]]], desc: str, **settings: Any) -> list[Any]:
    """One image per job, in order, with a progress bar."""
    return [pipe.generate(**kwargs, **settings)[0] for kwargs, _ in tqdm(todo, desc=desc, leave=False, disable=None)]


def judge(image: Any, wanted: dict[str, str]) -> dict[str, Any]:
    """Each named attribute right or wrong (shape only with template IoU >= SHAPE_IOU), the IoU, the clean share."""
    analysis = analyse(image)
    iou = template_iou(shape_mask(image), wanted["shape"]) if "shape" in wanted else None
    right = {name: getattr(analysis, name) == value for name, value in wanted.items()}
    if "shape" in right:
        right["shape"] = right["shape"] and iou >= SHAPE_IOU
    return {"right": right, "iou": iou, "clean": clean_fraction(image)}


MAP_IOU = 0.9  # issue 9's target for a map-conditioned model: the drawn shape covers the given map this well


def map_iou(image: Any, semantic_map: Any) -> float:
    """IoU of the drawn shape's mask (the analyser's shape_mask) with the map's foreground (label > 0). An image
    rendered from the same attributes as its map scores 1.0 (tests/test_evaluate.py)."""
    drawn, given = shape_mask(image), np.asarray(semantic_map) > 0
    union = (drawn | given).sum()
    return float((drawn & given).sum() / union) if union else 1.0


def adherence_of(images: list[Any], todo: list[tuple[dict[str, Any], dict[str, str]]]) -> dict[str, float]:
    """Per-attribute accuracy, all-correct, count, mean template IoU of the wanted shape and mean clean share;
    for jobs with a semantic map also the mean map IoU and the share with map IoU >= MAP_IOU ("map_match")."""
    judged = [judge(image, wanted) for image, (_, wanted) in zip(images, todo, strict=True)]
    table = accuracy_table([j["right"] for j in judged])
    ious = [j["iou"] for j in judged if j["iou"] is not None]
    if ious:
        table["template_iou"] = statistics.fmean(ious)
    table["clean"] = statistics.fmean(j["clean"] for j in judged)
    given = [(image, kw["semantic_map"]) for image, (kw, _) in zip(images, todo, strict=True) if "semantic_map" in kw]
    maps = [map_iou(image, semantic_map) for image, semantic_map in given]
    if maps:
        table["map_match"] = sum(iou >= MAP_IOU for iou in maps) / len(maps)
        table["map_iou"] = statistics.fmean(maps)
    return table


def drawings_of(images: list[Any]) -> dict[str, float]:
    """What an unconditional model can be asked (it has no caption to follow): the share of its images the strict
    reading accepts as one of the dataset's drawings ("drawn": every attribute read, the shape colour unlike the
    background, and the read shape's template fitting the mask with IoU >= SHAPE_IOU, as the dataset's own images
    do), the mean best-template IoU, and the mean clean share; `count` images."""
    analyses = [analyse(image) for image in images]
    drawn = [
        all(getattr(a, f) is not None for f in ATTRIBUTES) and a.colour != a.background and a.fit >= SHAPE_IOU
        for a in analyses
    ]
    return {
        "drawn": sum(drawn) / len(images),
        "count": len(images),
        "template_iou": statistics.fmean(max(a.fit or 0.0, 0.0) for a in analyses),
        "clean": statistics.fmean(clean_fraction(image) for image in images),
    }


def agreement(first: list[Any], second: list[Any]) -> float:
    """Share of seeds on which two samplers draw the same layout: every attribute read alike and shape masks
    with IoU >= AGREEMENT_IOU (DDIM and DPM-Solver++ both solve the probability-flow ODE, one map of x_T)."""
    same = 0
    for a, b in zip(first, second, strict=True):
        mask_a, mask_b = shape_mask(a), shape_mask(b)
        union = (mask_a | mask_b).sum()
        overlap = (mask_a & mask_b).sum() / union if union else 1.0
        read_a, read_b = analyse(a), analyse(b)
        alike = all(getattr(read_a, f) == getattr(read_b, f) for f in ATTRIBUTES)
        same += bool(alike and overlap >= AGREEMENT_IOU)
    return same / len(first)


def splits(pipe: Any) -> tuple[str, ...]:
    """The prompt splits that measure something: a class model has no held-out test, since a held-out colour-shape
    pair is a class label it never saw (an untrained embedding), not a new composition of words it knows."""
    return ("seen",) if condition_kind(pipe) == "class" else ("seen", "heldout")


def adherence(pipe: Any, split: str, n: int, *, seed: int = 0, **settings: Any) -> dict[str, float] | None:
    """adherence_of the images `pipe` draws for the evaluation prompts of `split`; None when unconditional."""
    if condition_kind(pipe) is None:
        return None
    todo = jobs(pipe, split, n, seed)
    return adherence_of(draw(pipe, todo, f"{split} {settings.get('sampler', '')}", **settings), todo)


@torch.no_grad()
def inpainting(pipe: Any, split: str, n: int, *, seed: int = 0, **settings: Any) -> dict[str, float] | None:
    """Inpainting into a plain background: the mask is the captioned shape's own region (dilated by 4 pixels),
    the input only the background colour; the analyser reads the shape drawn inside the mask (shape, colour,
    background accuracy) and PSNR (dB) outside the mask measures what was kept. Text pipelines only: trained
    (recipe concat_image "inpaint") or training-free (the blended step, or RePaint with settings' inpaint=)."""
    if condition_kind(pipe) != "text":
        return None
    todo, images, kept = [], [], []
    for k, (caption, wanted) in enumerate(eval_prompts(split, n=n, seed=seed)):
        full = Attributes(
            wanted.shape, wanted.colour, wanted.background, wanted.size or "large", wanted.position or "center"
        )
        picture, labels = render(full)
        mask = torch.nn.functional.max_pool2d(torch.from_numpy(labels != 0).float()[None, None], 9, 1, 4)[0, 0]
        plain = torch.from_numpy(picture.copy()).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W) in [-1, 1]
        plain[:] = plain[:, mask == 0].mean(dim=1)[:, None, None]  # the background colour alone
        image = pipe.generate(caption, image=plain, mask_image=mask, seed=seed + k, **settings)[0]
        drawn = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1
        mse = ((drawn - plain)[(mask == 0).expand_as(plain)] ** 2).mean()
        kept.append(float(10 * torch.log10(4.0 / mse.clamp_min(1e-10))))  # PSNR, peak-to-peak 2 in [-1, 1]
        images.append(image)
        todo.append(({}, {"shape": full.shape, "colour": full.colour, "background": full.background}))
    table = adherence_of(images, todo)
    return {**table, "psnr_outside_db": statistics.fmean(kept)}


SR_SEED = 2024  # the unseen images super-resolution is measured on (split "heldout": the text models' unseen pairs)


SR_ATTRIBUTES = ("shape", "colour", "background")  # what super-resolution is read on (size and position are given)


def super_resolution_cases(pipe: Any, n: int) -> list[tuple[torch.Tensor, torch.Tensor, Attributes]]:
    """(64x64 truth (1, 3, H, W), its low-res input, its attributes) of the super-resolution evaluation's first `n`
    images: SR_SEED's held-out split, downsampled as in training (bicubic with antialiasing)."""
    from zoo.pipelines.super_resolution import low_res_of

    data = pregenerate(n, seed=SR_SEED, split="heldout", image_size=pipe.recipe.image_size)
    truths = [data["images"][k : k + 1] for k in range(n)]
    return [(t, low_res_of(t, pipe.latent_shape[1]), a) for t, a in zip(truths, data["attributes"], strict=True)]


@torch.no_grad()
def super_resolution(pipe: Any, n: int, *, seed: int = 0, **settings: Any) -> dict[str, float] | None:
    """Super-resolution on `n` unseen images of the held-out colour-shape pairs (never trained on by a model trained
    on the seen pairs; one trained with `--split all` has seen those pairs, never these images): each 64x64 truth
    downsampled to the model's low-res input (bicubic with antialiasing, zoo/pipelines/super_resolution.py) and
    upsampled by the model and by bicubic interpolation; PSNR (dB) of each to the ground truth (both 8-bit), and
    the strict analyser's reading of shape (template IoU >= SHAPE_IOU), colour and background of each; and the
    PSNR and reading of the autoencoder's round trip D(E(x)) of the same images: what a model that draws through
    D reaches at best, about (its latents could beat E(x) a little)."""
    if condition_kind(pipe) != "low_res":
        return None
    from zoo.pipelines.base import to_pil, to_tensor
    from zoo.pipelines.super_resolution import bicubic_upsampled

    size = pipe.recipe.image_size
    todo, drawn, bicubic, round_trips, psnr_model, psnr_bicubic, psnr_ceiling = [], [], [], [], [], [], []
    bar = tqdm(super_resolution_cases(pipe, n), desc=f"{pipe.recipe.name} super-resolution", leave=False, disable=None)
    for k, (truth, low, wanted) in enumerate(bar):
        drawn += pipe.generate(image=low, seed=seed + k, **settings)
        bicubic += to_pil(bicubic_upsampled(low, size))  # 8-bit, as the model's image
        psnr_model.append(psnr(to_tensor(drawn[-1]), truth))
        psnr_bicubic.append(psnr(to_tensor(bicubic[-1]), truth))
        round_trips += pipe.decode(pipe.encode(truth))
        psnr_ceiling.append(psnr(to_tensor(round_trips[-1]), truth))
        todo.append(({}, {name: getattr(wanted, name) for name in SR_ATTRIBUTES}))
    return {
        "psnr_db": statistics.fmean(psnr_model),
        "psnr_bicubic_db": statistics.fmean(psnr_bicubic),
        "psnr_autoencoder_db": statistics.fmean(psnr_ceiling),
        "model": adherence_of(drawn, todo),
        "bicubic": adherence_of(bicubic, todo),
        "autoencoder": adherence_of(round_trips, todo),
    }


IMG2IMG_SEED = 2025  # the held-out dataset images image-to-image starts from (pairs never trained on)
IMG2IMG_STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.6, 1.0)


def img2img_jobs(n: int, seed: int = 0) -> list[tuple[np.ndarray, dict[str, str], str, dict[str, str]]]:
    """(input image, its attributes, prompt, the prompt's named attributes) for `n` held-out dataset images
    (uint8 (H, W, 3), every attribute known). Each prompt is the next seen-pair evaluation caption (eval_prompts,
    in order, each used once) whose shape, colour and background all differ from its input's, so an output that
    reads as the input cannot have come from the prompt, nor one that reads as the prompt from the input."""
    data = pregenerate(n, seed=IMG2IMG_SEED, split="heldout", uint8=True)
    captions = iter(eval_prompts("seen", n=8 * n + 36, seed=seed))  # about 2 in 5 differ in all three
    result = []
    for image, source in zip(data["images"], data["attributes"], strict=True):
        caption, wanted = next(
            (c, w)
            for c, w in captions
            if all(getattr(w, f) != getattr(source, f) for f in ("shape", "colour", "background"))
        )
        named = {f: getattr(wanted, f) for f in ATTRIBUTES if getattr(wanted, f) is not None}
        result.append((image.permute(1, 2, 0).numpy(), {f: getattr(source, f) for f in ATTRIBUTES}, caption, named))
    return result


def check_strengths(strengths: Any) -> tuple[float, ...]:
    """A non-empty sequence of strengths, each in [0, 1] (check_strength's error names the bad one)."""
    if not isinstance(strengths, list | tuple) or not strengths:
        raise ValueError(f"strengths must be a non-empty sequence of numbers in [0, 1], got {strengths!r}")
    return tuple(check_strength(s) for s in strengths)


def check_edits_images(pipe: Any) -> None:
    """Image-to-image is measured on text pipelines that take image= and strength= alone: an error otherwise."""
    if condition_kind(pipe) != "text" or inpaints_by_concatenation(pipe):
        kind = "the inpainting model" if inpaints_by_concatenation(pipe) else f"conditioned on {condition_kind(pipe)}"
        raise ValueError(
            f"img2img is measured on text pipelines (the prompt names another image than the input): "
            f"{pipe.recipe.name} is {kind}"
        )


# the prompt each input is edited with: naming another image, "", or the input's own caption (shape, colour and
# background; size and position left to the image)
IMG2IMG_PROMPTS = ("other", "empty", "own")


@torch.no_grad()
def image_to_image(
    pipe: Any, n: int, strengths: Any = IMG2IMG_STRENGTHS, *, seed: int = 0, prompt: str = "other", **settings: Any
) -> dict[str, Any]:
    """Image-to-image (SDEdit) from `n` held-out dataset images, each with a prompt that names another shape,
    colour and background (img2img_jobs), at every strength: the share of outputs the strict analyser reads as
    the input (every attribute, shape with template IoU >= SHAPE_IOU: "kept") and as the prompt ("followed"),
    and the share identical to the plain generation of the same prompt and seed (strength 1 ignores the image,
    diffusers' semantics, so there it should be all). Also the analyser's reading of the inputs themselves (what
    "kept" can reach) and the plain generations' adherence. A text pipeline only (check_edits_images).
    `prompt` "empty": every input edited with the empty prompt instead (the unconditional model: what the image
    alone keeps, no caption pulling it away); "followed" then names nothing and is left out. "own": each input
    edited with its own caption's shape, colour and background (SDEdit's usual use, a prompt that agrees with
    the picture): "kept" then also asks the size and position the prompt leaves open."""
    check_edits_images(pipe)
    strengths = check_strengths(strengths)
    if prompt not in IMG2IMG_PROMPTS:
        raise ValueError(f"img2img prompt must be one of {IMG2IMG_PROMPTS}, got {prompt!r}")
    pairs = img2img_jobs(n, seed)
    if prompt == "empty":
        pairs = [(image, source, "", {}) for image, source, _, _ in pairs]
    elif prompt == "own":
        named = ("shape", "colour", "background")
        pairs = [(image, source, own_caption(source), {f: source[f] for f in named}) for image, source, _, _ in pairs]
    inputs = [image for image, *_ in pairs]
    as_input = [({}, source) for _, source, _, _ in pairs]
    asked = [({"prompt": caption, "seed": seed + k}, named) for k, (_, _, caption, named) in enumerate(pairs)]
    plain = draw(pipe, asked, "plain", **settings)
    rows, with_images = [], list(zip(asked, inputs, strict=True))
    for strength in strengths:
        todo = [({**kw, "image": image, "strength": strength}, named) for (kw, named), image in with_images]
        drawn = draw(pipe, todo, f"img2img {strength}", **settings)
        same = [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(drawn, plain, strict=True)]
        row = {"strength": strength, "kept": adherence_of(drawn, as_input), "same_as_plain": statistics.fmean(same)}
        rows.append({**row, "followed": adherence_of(drawn, todo)} if prompt != "empty" else row)
    result = {"prompt": prompt, "inputs": adherence_of(inputs, as_input), "by_strength": rows}
    return {**result, "plain": adherence_of(plain, asked)} if prompt != "empty" else result


def own_caption(source: dict[str, str]) -> str:
    """An image's caption naming its shape, colour and background only ("a red circle on a blue background")."""
    full = Attributes(**{f: source[f] for f in ATTRIBUTES})
    return full.caption(include_size=False, include_position=False)


def example_low_res(pipe: Any) -> torch.Tensor:
    """A super-resolution model's input for timing: a large red circle on blue, downsampled (1, 3, h, w)."""
    from zoo.pipelines.super_resolution import low_res_of

    picture = render(Attributes("circle", "red", "blue", "large", "center"))[0]
    truth = torch.from_numpy(picture.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, H, W)
    return low_res_of(truth, pipe.latent_shape[1])


def relative_time(pipe: Any, settings: dict[str, Any], reference: str = "ldm-clip-kl") -> dict[str, float]:
    """Seconds of one image of `pipe` against one plain text-to-image generation of `reference` (its embedded
    weights, its own guidance) at the same sampler and steps, measured in the same run."""
    plain = zoo.build(reference)
    steps = {"sampler": settings["sampler"], "steps": settings["steps"]}
    seconds = seconds_per_image(plain, **steps, guidance_scale=plain.recipe.guidance_scale)
    return {
        "reference": reference,
        "reference_seconds": seconds,
        "ratio": seconds_per_image(pipe, **settings) / seconds,
    }


def inpainting_methods(
    pipe: Any, n: int, settings: dict, jump: int | None = None, resample: int | None = None
) -> dict[str, Any]:
    """`inpainting` by the pipeline's own method: trained by concatenation (ldm-inpaint-kl) or the blended step
    at `settings`; for training-free pipelines also RePaint (DDPM's sampler, the same steps and guidance; j and r
    the API's defaults unless given).
    Each entry names its method, so the table can set trained, blended and RePaint side by side."""
    trained = inpaints_by_concatenation(pipe)
    own = inpainting(pipe, "seen", n, **settings)
    if own is None:
        return {"inpainting": None}
    method = "trained, by concatenation" if trained else f"blended step, {settings['sampler']}"
    found: dict[str, Any] = {"inpainting": {**own, "method": method}}
    if not trained:
        defaults = RePaint()
        repaint = RePaint(defaults.jump if jump is None else jump, defaults.resample if resample is None else resample)
        chosen = {**settings, "sampler": "ddpm", "inpaint": "repaint"}
        chosen.update(repaint_jump=repaint.jump, repaint_resample=repaint.resample)
        method = f"RePaint j={repaint.jump} r={repaint.resample}, ddpm"
        found["inpainting_repaint"] = {**inpainting(pipe, "seen", n, **chosen), "method": method}
    return found


def inpaints_by_concatenation(pipe: Any) -> bool:
    """A model trained to inpaint (ldm-inpaint-kl: the mask and masked latent concatenated to z_t)."""
    return pipe.recipe.kind == "latent" and pipe.recipe.concat_image == "inpaint"


def condition_kind(pipe: Any) -> str | None:
    """What the pipeline is conditioned on: "low_res" (super-resolution), "text", "class", "seg", or None."""
    if getattr(getattr(pipe, "recipe", None), "concat_image", None) == "low_res":  # a constant text context
        return "low_res"
    if getattr(pipe, "conditioner", None) is not None:
        return pipe.conditioner.kind
    return "seg" if getattr(pipe, "spatial", None) is not None else None


@torch.no_grad()
def reconstruction(pipe: Any, n: int = 256, seed: int = 12345) -> dict[str, float] | None:
    """PSNR (dB) of decode(encode(x)) on images the autoencoder never saw, and the strict analyser's reading of
    those round trips against the images' true attributes (shape only at template IoU >= SHAPE_IOU): what a
    model drawing through this decoder can reach at most, about; codebook usage for VQ."""
    ae = getattr(pipe, "autoencoder", None)
    if ae is None:
        return None
    data = pregenerate(n, seed=seed, split="all", image_size=pipe.recipe.image_size)
    x = data["images"].to(pipe.device)
    z = torch.cat([ae.encode(chunk) for chunk in x.split(64)])
    rec = torch.cat([ae.decode(chunk) for chunk in z.split(64)])
    result = {"psnr_db": psnr(rec, x)}
    from zoo.pipelines.base import to_pil

    todo = [({}, {name: getattr(a, name) for name in ATTRIBUTES}) for a in data["attributes"]]
    read = adherence_of(to_pil(rec.clamp(-1, 1).cpu()), todo)
    result |= {"read_shape": read["shape"], "read_all": read["all"]}
    if hasattr(ae, "quantize"):
        _, indices, _ = ae.quantize(z)
        counts = torch.bincount(indices.flatten(), minlength=ae.config.num_embeddings).float()
        p = counts / counts.sum()
        result["codes_used"] = int((counts > 0).sum())
        result["codebook_size"] = int(ae.config.num_embeddings)
        result["perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return result


def autoencoder_cell(key: str, value: Any) -> str:
    """One figure of the autoencoder row: the round trips' readings as percentages, the rest as numbers."""
    if key.startswith("read_"):
        return f"round trip read right: {key.removeprefix('read_')} {value:.0%}"
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


@torch.no_grad()
def clip_zero_shot(n: int = 256, seed: int = 777) -> dict[str, float] | None:
    """The shipped CLIP model: among captions differing only in colour (or shape), pick the closest to each image."""
    if not (CLIP_FOLDER / "config.json").is_file():
        return None
    from transformers import AutoTokenizer

    clip = load_clip(CLIP_FOLDER)
    tokenizer = AutoTokenizer.from_pretrained(CLIP_FOLDER)
    return zero_shot_on(clip, tokenizer, clip.config.text_config.max_position_embeddings, n, seed, torch.device("cpu"))


def load_clip(folder: Path) -> Any:
    """A transformers CLIPModel folder, in float32: stored as transformers saves it, or in the zoo's int8 storage
    (components/storage.py; `zoo.train export --dtype int8` writes clip-shapes so), dequantised on reading."""
    from transformers import CLIPConfig, CLIPModel

    from components import storage

    weights = folder / "model.safetensors"
    if not (weights.is_file() and storage.is_int8(weights)):
        return CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    clip = CLIPModel(CLIPConfig.from_pretrained(folder))
    clip.load_state_dict(storage.read(weights), strict=True)
    return clip.float().eval()


@torch.no_grad()
def bits_per_dim(pipe: Any, n: int = 16, seed: int = 4321, exact_below: int = 50, stride: int = 10) -> float | None:
    """Negative log-likelihood bound of a pixel model in bits/dim (DDPM Sec. 4.2, Eq. 5), on held-out images.

    L = L_T + sum_{t>=1} L_{t-1} + L_0 (nats/dim, / ln 2). The KL terms concentrate at small t, so those
    below `exact_below` are summed exactly and the rest estimated from every `stride`-th term (their mean
    times their count). Model variance: the recipe's (beta tilde, beta, or the U-Net's learned one).
    """
    if getattr(pipe, "autoencoder", None) is not None:
        return None
    from components.schedulers.losses import vlb_terms

    T = pipe.num_timesteps
    x = pregenerate(n, seed=seed, split="all", image_size=pipe.recipe.image_size)["images"].to(pipe.device)
    model = lambda x_t, t: pipe.unet(x_t, t)  # noqa: E731
    options = {
        "prediction_type": pipe.recipe.prediction_type,
        "model_variance": pipe.recipe.variance,
        "generator": torch.Generator("cpu").manual_seed(seed),
    }
    near = vlb_terms(model, x, pipe.schedule, timesteps=torch.arange(1, exact_below), **options)
    far = vlb_terms(model, x, pipe.schedule, timesteps=torch.arange(exact_below, T, stride), **options)
    nats = near.prior + near.decoder + near.kl.sum(dim=1) + far.kl.mean(dim=1) * (T - exact_below)
    return float((nats / math.log(2)).mean())


def seconds_per_image(pipe: Any, repeats: int = 3, **settings: Any) -> float:
    """Median wall time of one image at the recipe's default settings (after one warm-up)."""
    kind = condition_kind(pipe)
    kwargs: dict[str, Any] = {"seed": 0, **settings}
    if kind == "text":
        kwargs["prompt"] = "a red circle on a blue background"
    elif kind == "class":
        kwargs["prompt"] = 0
    elif kind == "seg":
        kwargs["semantic_map"] = torch.from_numpy(render(Attributes("circle", "red", "blue", "large", "center"))[1])
    elif kind == "low_res":
        kwargs["image"] = example_low_res(pipe)
    pipe.generate(**kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe.generate(**kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sampler_settings(pipe: Any, sampler: str | None, steps: int | None, guidance_scale: float | None) -> dict:
    settings = {"sampler": sampler or pipe.recipe.sampler, "steps": steps or pipe.recipe.steps}
    if pipe.recipe.kind == "latent" and condition_kind(pipe) != "low_res":  # super-resolution: no guidance
        settings["guidance_scale"] = pipe.recipe.guidance_scale if guidance_scale is None else guidance_scale
    return settings


def evaluate(
    name: str,
    *,
    prompts: int = 48,
    weights: str | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    all_samplers: bool = False,
    guidance_scale: float | None = None,
    inpaint: bool = False,
    repaint_jump: int | None = None,
    repaint_resample: int | None = None,
    img2img: bool = False,
    strengths: Any = None,
    img2img_prompt: str = "other",
) -> dict:
    """Every measure that applies to the pipeline at `sampler` (default: the recipe's) and, with `all_samplers`,
    at the other two; the recipe's settings unless given. The first sampler's figures are also the result's
    top-level `sampler`, `adherence_*` and `seconds_per_image` (what the app's Zoo tab shows). `inpaint`: also
    inpainting (`inpainting_methods`), RePaint with `repaint_jump`, `repaint_resample` (the API's defaults).
    `img2img`: also image-to-image at `strengths` (default IMG2IMG_STRENGTHS), the first sampler's settings,
    with `img2img_prompt` ("other": prompts naming other images; "empty"); a text pipeline only (an error
    otherwise, before anything is drawn), as are strengths outside [0, 1] and another img2img_prompt."""
    if (strengths is not None or img2img_prompt != "other") and not img2img:
        raise ValueError("strengths and img2img_prompt are image-to-image's: pass img2img=True (--img2img) with them")
    if img2img_prompt not in IMG2IMG_PROMPTS:
        raise ValueError(f"img2img_prompt must be one of {IMG2IMG_PROMPTS}, got {img2img_prompt!r}")
    strengths = check_strengths(IMG2IMG_STRENGTHS if strengths is None else strengths) if img2img else None
    pipe = zoo.build(name, weights=weights)
    if img2img:
        check_edits_images(pipe)
    first = sampler or pipe.recipe.sampler
    samplers = (first, *(s for s in SAMPLERS if s != first)) if all_samplers else (first,)
    result: dict[str, Any] = {
        "pipeline": name,
        "weights": "trained" if pipe.pretrained else "random",
        "threads": torch.get_num_threads(),
        "by_sampler": [],
    }
    images: dict[str, list[Any]] = {}
    # an inpainting model's task is inpainting (it needs an image and a mask): that is what it is measured on
    inpainting_model = inpaints_by_concatenation(pipe)
    inpaint = inpaint or inpainting_model
    for sampler in samplers:
        settings = sampler_settings(pipe, sampler, steps, guidance_scale)
        entry: dict[str, Any] = {**settings}
        if condition_kind(pipe) == "low_res":
            entry["super_resolution"] = super_resolution(pipe, prompts, **settings)
            entry["time_vs_plain"] = relative_time(pipe, settings)
        elif condition_kind(pipe) is not None and not inpainting_model:
            for split in splits(pipe):
                todo = jobs(pipe, split, prompts)
                drawn = draw(pipe, todo, f"{name} {settings['sampler']} {split}", **settings)
                images[f"{settings['sampler']}-{split}"] = drawn
                entry[f"adherence_{split}"] = adherence_of(drawn, todo)
        elif condition_kind(pipe) is None:  # unconditional: seeds 0..prompts-1, read as drawings
            todo = [({"seed": k}, {}) for k in range(prompts)]
            drawn = draw(pipe, todo, f"{name} {settings['sampler']}", **settings)
            images[f"{settings['sampler']}-unconditional"] = drawn
            entry["drawings"] = drawings_of(drawn)
        if not inpainting_model:  # its time next to plain generation: python -m zoo.bench_inpaint
            entry["seconds_per_image"] = seconds_per_image(pipe, **settings)
        result["by_sampler"].append(entry)
    first = result["by_sampler"][0]
    shown = ("sampler", "steps", "guidance_scale", "seconds_per_image", "super_resolution", "drawings")
    result.update({k: first[k] for k in shown if k in first})
    for split in ("seen", "heldout"):
        result[f"adherence_{split}"] = first.get(f"adherence_{split}")
    for split in ("seen", "heldout", "unconditional"):
        if f"ddim-{split}" in images and f"dpmpp-{split}" in images:
            result.setdefault("ddim_dpmpp_agreement", {})[split] = agreement(
                images[f"ddim-{split}"], images[f"dpmpp-{split}"]
            )
    if inpaint:  # the first sampler's settings, seen pairs
        settings = sampler_settings(pipe, samplers[0], steps, guidance_scale)
        result.update(inpainting_methods(pipe, prompts, settings, repaint_jump, repaint_resample))
    if img2img:  # the first sampler's settings, held-out inputs
        settings = sampler_settings(pipe, samplers[0], steps, guidance_scale)
        result["img2img"] = image_to_image(pipe, prompts, strengths, prompt=img2img_prompt, **settings)
    result["reconstruction"] = reconstruction(pipe)
    if condition_kind(pipe) == "text" and pipe.recipe.conditioner.name == "clip":
        result["clip_zero_shot"] = clip_zero_shot()
    result["bits_per_dim"] = bits_per_dim(pipe)
    return result


def percent(table: dict[str, float]) -> str:
    cells = [f"{k} {v:.0%}" for k, v in table.items() if k not in ("count", "template_iou", "clean", "map_iou")]
    cells += [f"{k} {table[k]:.3f}" for k in ("template_iou", "clean", "map_iou") if k in table]
    return ", ".join(cells)


def table(result: dict) -> str:
    """The result as a Markdown table (what the README shows): one block of rows per sampler."""
    rows = [("pipeline", result["pipeline"]), ("weights", result["weights"])]
    for entry in result.get("by_sampler") or [result]:
        guidance = f", guidance {entry['guidance_scale']}" if "guidance_scale" in entry else ""
        label = f"{entry['sampler']} {entry['steps']}"
        rows.append((f"{label}: settings", f"{entry['sampler']}, {entry['steps']} steps{guidance}"))
        for split in ("seen", "heldout"):
            if acc := entry.get(f"adherence_{split}"):
                rows.append((f"{label}: {split} pairs (n={int(acc['count'])})", percent(acc)))
        if drawings := entry.get("drawings"):
            rows.append((f"{label}: unconditional samples (n={int(drawings['count'])})", percent(drawings)))
        if sr := entry.get("super_resolution"):
            rows += super_resolution_rows(label, sr, entry["time_vs_plain"])
        if "seconds_per_image" in entry:
            rows.append(
                (f"{label}: seconds per image ({result['threads']} threads)", f"{entry['seconds_per_image']:.2f}")
            )
    if agree := result.get("ddim_dpmpp_agreement"):
        rows.append(("DDIM / DPM-Solver++ same-seed agreement", ", ".join(f"{k} {v:.0%}" for k, v in agree.items())))
    for key in ("inpainting", "inpainting_repaint"):
        if inpainted := result.get(key):
            shown = {k: v for k, v in inpainted.items() if k not in ("psnr_outside_db", "method")}
            cells = f"{percent(shown)}, PSNR outside the mask {inpainted['psnr_outside_db']:.1f} dB"
            method = f" ({inpainted['method']})" if "method" in inpainted else ""
            rows.append((f"inpainting{method}, seen pairs (n={int(inpainted['count'])})", cells))
    if edited := result.get("img2img"):
        rows += image_to_image_rows(edited)
    if rec := result.get("reconstruction"):
        rows.append(("autoencoder", ", ".join(autoencoder_cell(k, v) for k, v in rec.items())))
    if zs := result.get("clip_zero_shot"):
        rows.append(("CLIP zero-shot", ", ".join(f"{k} {v:.0%}" for k, v in zs.items())))
    if result.get("bits_per_dim") is not None:
        rows.append(("bits/dim (VLB bound)", f"{result['bits_per_dim']:.3f}"))
    return "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def super_resolution_rows(label: str, sr: dict, timing: dict) -> list[tuple[str, str]]:
    n = int(sr["model"]["count"])
    gain = sr["psnr_db"] - sr["psnr_bicubic_db"]
    psnr_cells = f"model {sr['psnr_db']:.2f} dB, bicubic {sr['psnr_bicubic_db']:.2f} dB ({gain:+.2f} dB)"
    psnr_cells += f"; the autoencoder's round trip D(E(x)) {sr['psnr_autoencoder_db']:.2f} dB"
    time_cells = f"{timing['ratio']:.2f}x {timing['reference']}'s ({timing['reference_seconds']:.2f} s)"
    return [
        (f"{label}: super-resolution PSNR, held-out images (n={n})", psnr_cells),
        (f"{label}: super-resolution read by the analyser", percent(sr["model"])),
        (f"{label}: bicubic read by the analyser", percent(sr["bicubic"])),
        (f"{label}: the autoencoder's round trip of the truth read by the analyser", percent(sr["autoencoder"])),
        (f"{label}: time per image vs plain generation at the same steps", time_cells),
    ]


def image_to_image_rows(edited: dict) -> list[tuple[str, str]]:
    """One row per strength (kept, followed, identical to plain), then the inputs' and plain generation's rows."""
    n = int(edited["inputs"]["count"])
    with_prompt = {"other": "prompts naming other images", "empty": "the empty prompt", "own": "their own captions"}[
        edited.get("prompt", "other")
    ]
    rows = [
        (
            f"img2img strength {row['strength']:g} (n={n} held-out inputs, {with_prompt})",
            f"kept: {percent(row['kept'])}; "
            + (f"followed: {percent(row['followed'])}; " if "followed" in row else "")
            + f"identical to plain generation {row['same_as_plain']:.0%}",
        )
        for row in edited["by_strength"]
    ]
    rows.append(("img2img: the inputs themselves read by the analyser", percent(edited["inputs"])))
    if "plain" in edited:
        rows.append(("img2img: plain generation, the same prompts and seeds", percent(edited["plain"])))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoo.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="+", help="pipeline name(s)")
    parser.add_argument("--prompts", type=int, default=48, help="prompts per split (super-resolution: images)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the recipe's)")
    parser.add_argument("--sampler", default=None, choices=SAMPLERS, help="default: the recipe's")
    parser.add_argument("--all-samplers", action="store_true", help="the recipe's sampler, then the other two")
    parser.add_argument("--guidance", type=float, default=None, dest="guidance_scale", help="default: the recipe's")
    parser.add_argument("--weights", default=None, help="a folder or Hub repo instead of the embedded weights")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (figures in the README: 2)")
    parser.add_argument("--save", action="store_true", help="write evaluation.json next to the embedded weights")
    parser.add_argument("--inpainting", action="store_true", dest="inpaint", help="also inpaint into backgrounds")
    parser.add_argument("--repaint-jump", type=int, default=None, help="RePaint's jump length j (default 10)")
    parser.add_argument("--repaint-resample", type=int, default=None, help="RePaint's resampling r (default 10)")
    parser.add_argument("--img2img", action="store_true", help="also image-to-image from held-out dataset images")
    parser.add_argument(
        "--strengths", type=float, nargs="+", default=None, help=f"img2img strengths (default {IMG2IMG_STRENGTHS})"
    )
    parser.add_argument(
        "--img2img-prompt", default="other", choices=IMG2IMG_PROMPTS,
        help="other: each input edited with a prompt naming another image (default); empty: the empty prompt;"
        " own: its own caption (shape, colour, background)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    options = {k: v for k, v in vars(args).items() if k not in ("name", "threads", "save")}  # evaluate()'s keywords
    for name in args.name:
        result = evaluate(name, **options)
        print(table(result) + "\n")  # noqa: T201 (the command's output)
        if args.save and (folder := embedded_weights(name)):
            (folder / "evaluation.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
