"""The training stages: autoencoders, the contrastive CLIP model, and diffusion models (pixel and latent).

Each stage is one function `train_<stage>(args) -> Path` that writes `<out>/final` (Hub layout) and
`<out>/metrics.json`, resuming from `<out>/checkpoint` when the run was stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from zoo.train.data import cached_dataset, to_float
from zoo.train.loop import LoopConfig, Trainer, process_state

logger = logging.getLogger(__name__)


def batch_indices(step: int, batch: int, total: int, seed: int) -> torch.Tensor:
    """Random indices that depend only on (seed, step), so a resumed run sees the batches it would have seen."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, total, (batch,), generator=generator)


def grid(images: list[Image.Image], columns: int = 8) -> Image.Image:
    """Training's sample sheets: rows of 8 on grey (the library's one grid maker)."""
    from zoo.pipelines.base import image_grid

    return image_grid(images, columns=min(columns, len(images)))


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = ((x.clamp(-1, 1) - y.clamp(-1, 1)) ** 2).mean(dim=(1, 2, 3))
    return float((10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean())


def write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.info("metrics %s", metrics)


# --------------------------------------------------------------------------------------------- autoencoders
def train_autoencoder(args: Any) -> Path:
    """Reconstruction + KL (or codebook) objective on the procedural images; LDM Sec. 3.1 / appendix G."""
    from components.autoencoders.blocks import estimate_scaling_factor
    from zoo import catalog
    from zoo.registry import AUTOENCODERS

    catalog.load()
    out = Path(args.out)
    data = cached_dataset(args.cache, args.samples, seed=args.data_seed, split=args.split)
    images = data["images"]
    torch.manual_seed(args.seed)
    ae = AUTOENCODERS.build(args.name, tiny=args.tiny, **json.loads(args.overrides or "{}"))
    trainer = Trainer(out, {"autoencoder": ae}, loop_config(args))
    refuse_vq_across_processes(ae, trainer.shard.world)
    device = trainer.device
    images = images.to(device)  # uint8: 50,000 images are 0.6 GB
    generator = torch.Generator(device=device)

    def step(i: int) -> tuple[torch.Tensor, dict]:
        x = to_float(images[trainer.shard(batch_indices(i, args.batch, len(images), args.seed))]).to(device)
        generator.manual_seed((args.seed * 7_919 + i) * 1_009 + trainer.shard.index)  # per step and batch part
        return ae.loss(x, generator=generator)

    history = trainer.run(step, lambda path: reconstruction_grid(ae, images[:16], path))
    heldout = cached_dataset(args.cache, 512, seed=args.data_seed + 1, split="all")  # every process: it waits for all
    if not trainer.is_main:  # the main process evaluates and exports
        return out / "final"
    with trainer.ema_weights():
        ae.eval()
        with torch.no_grad():
            scale = estimate_scaling_factor(ae, to_float(images[:2048]).to(device))
            ae.config = ae.config.replace(scaling_factor=float(scale))
        heldout_db = reconstruction_psnr(ae, to_float(heldout["images"]).to(device))
        ae.cpu().save_pretrained(out / "final")
    write_metrics(out, {"psnr_heldout_db": heldout_db, "scaling_factor": scale, "history": history[-3:]})
    return out / "final"


def train_decoder(args: Any) -> Path:
    """Fine-tune a trained autoencoder's decoder with its encoder frozen, as Stability did for Stable Diffusion's
    VAE (the ft-EMA / ft-MSE kl-f8 decoders, 2022): E, the codebook and the scaling factor stay bit for bit, so
    the latents every diffusion model trained on, and those models, stay valid; only x_hat = D(z) improves.
    Objective: the autoencoder's reconstruction loss on D(z), z ~ q(z|x) (LDM Sec. 3.1 without the terms E alone
    sets: the KL, or the codebook and commitment losses), or with `--latents mode` z = the posterior mean, the
    latent diffusion trains on. `--split all` trains on every colour-shape pair (see the flag's help).
    `--grow-decoder N` first deepens the decoder by N resnets per level that start as the identity
    (`grow_decoder`): the same output, more capacity to fine-tune."""
    from zoo.pipeline_io import load_part

    out = Path(args.out)
    data = cached_dataset(args.cache, args.samples, seed=args.data_seed, split=args.split)
    images = data["images"]
    torch.manual_seed(args.seed)
    if not (Path(args.autoencoder) / "config.json").is_file():
        raise SystemExit(f"--autoencoder {args.autoencoder}: no config.json there (a trained autoencoder folder)")
    ae = load_part("autoencoder", args.name, args.autoencoder)
    if args.grow_decoder:  # before the Trainer: a resumed run grows alike, then loads its checkpoint into it
        from components.autoencoders.blocks import grow_decoder

        try:
            ae = grow_decoder(ae, args.grow_decoder)
        except ValueError as error:
            raise SystemExit(f"--grow-decoder {args.grow_decoder}: {error}") from None
        logger.info(
            "decoder grown to %d resnets a level (the new ones start as the identity)", ae.config.decoder_blocks
        )
    ae.requires_grad_(False)
    for part in (ae.post_quant_conv, ae.decoder):  # z -> x_hat: the same two modules in the KL and VQ trees
        part.requires_grad_(True)
    trainer = Trainer(out, {"autoencoder": ae}, loop_config(args))
    device = trainer.device
    generator = torch.Generator(device=device)
    loss = contrast_weighted_l1 if args.loss == "contrast-l1" else ae.reconstruction_loss

    def step(i: int) -> tuple[torch.Tensor, dict]:
        x = to_float(images[trainer.shard(batch_indices(i, args.batch, len(images), args.seed))]).to(device)
        generator.manual_seed((args.seed * 7_919 + i) * 1_009 + trainer.shard.index)
        with torch.no_grad():  # KL: a posterior sample or its mean; VQ: z_e either way (quantised in decode)
            z = ae.encode(x, sample=args.latents == "sample", generator=generator)
        return loss(ae.decode(z), x), {}

    heldout = to_float(cached_dataset(args.cache, 512, seed=args.data_seed + 1, split="all")["images"]).to(device)
    before = reconstruction_psnr(ae, heldout)
    history = trainer.run(step, lambda path: reconstruction_grid(ae, images[:16], path))
    if not trainer.is_main:
        return out / "final"
    with trainer.ema_weights():
        after = reconstruction_psnr(ae, heldout)
        ae.cpu().save_pretrained(out / "final")
    write_metrics(out, {"psnr_heldout_db_before": before, "psnr_heldout_db": after, "history": history[-3:]})
    return out / "final"


MIN_CONTRAST = 0.02  # of the [-1, 1] range: a nearly blank image's weight stays bounded


def contrast_weighted_l1(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 with each image weighted by 1 / its content, m_i = mean |x_i - its median colour| (at least
    MIN_CONTRAST), the weights normalised to mean 1 over the batch: a small or dark-on-dark shape (a green
    triangle on black moves few pixel values by little) counts as much as a large bright one, where plain L1,
    LDM's pixel term, lets the decoder round it into a blob. Ours, not a paper's: a stand-in for the
    perceptual (LPIPS) and adversarial terms of LDM's autoencoder loss (Sec. 3.1, App. G), which need weights
    from the Hub. A perfect reconstruction is still the minimum (every weight is positive)."""
    background = x.flatten(2).median(dim=2).values[..., None, None]  # (B, C, 1, 1): the commonest colour
    content = (x - background).abs().mean(dim=(1, 2, 3)).clamp_min(MIN_CONTRAST)  # (B,)
    weights = (1 / content) / (1 / content).mean()
    return ((x_hat.float() - x.float()).abs().mean(dim=(1, 2, 3)) * weights).mean()


@torch.no_grad()
def reconstruction_grid(ae: Any, images: torch.Tensor, path: Path) -> None:
    """The training sample sheet of an autoencoder: the images, then their reconstructions D(E(x))."""
    x = to_float(images).to(next(ae.parameters()).device)
    grid([*to_images(x), *to_images(ae.decode(ae.encode(x)))]).save(path)


@torch.no_grad()
def reconstruction_psnr(ae: Any, x: torch.Tensor) -> float:
    """PSNR of D(E(x)) (the posterior mean for KL) against x, in eval mode, batches of 128."""
    mode = ae.training
    ae.eval()
    rec = torch.cat([ae.decode(ae.encode(chunk)) for chunk in x.split(128)])
    ae.train(mode)
    return psnr(rec.cpu(), x.cpu())


def refuse_vq_across_processes(ae: Any, world: int) -> None:
    """A VQ autoencoder restarts dead codes from its own batch inside the forward: processes would disagree."""
    from components.autoencoders.vq import VQAutoencoder

    if world > 1 and isinstance(ae, VQAutoencoder):
        raise SystemExit(
            f"a VQ autoencoder trains on one process only (this launch started {world}): its dead-code restarts "
            "write the codebook from the local batch, so the processes' codebooks would drift apart"
        )


def to_images(x: torch.Tensor) -> list[Image.Image]:
    from zoo.pipelines.base import to_pil

    return to_pil(x.float())


def loop_config(args: Any) -> LoopConfig:
    return LoopConfig(
        steps=args.steps,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema_decay,
        sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        seed=args.seed,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        pause_seconds=args.pause_after_minutes * 60 if args.pause_after_minutes else None,
        batch=args.batch,
        grad_accum=args.grad_accum,
        processes=args.processes,
        mixed_precision=args.mixed_precision,
    )


# --------------------------------------------------------------------------------------------------- CLIP
def clip_model_for(conditioner: Any, image_size: int, *, width: int, layers: int, patch: int) -> Any:
    """A transformers CLIPModel whose text tower is the conditioner's and whose image tower is a small ViT."""
    from transformers import CLIPConfig, CLIPModel

    text_config = conditioner.text_model.config.to_dict()
    vision_config = {
        "image_size": image_size,
        "patch_size": patch,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, width // 32),
        "num_channels": 3,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=width)
    model = CLIPModel(config)
    model.text_model.load_state_dict(conditioner.text_model.state_dict())
    return model


TINY_CLIP = {"num_layers": 1, "num_heads": 2, "max_length": 24}  # width stays the recipes' CONTEXT_DIM


def train_clip(args: Any) -> Path:
    """Contrastive image-caption pre-training (Radford et al. 2021, the symmetric InfoNCE loss)."""
    from components.conditioners.clip import CLIPTextConditioner
    from zoo.data.shapes import caption_vocabulary

    out = Path(args.out)
    data = cached_dataset(args.cache, args.samples, seed=args.data_seed)
    images, captions = data["images"], data["captions"]
    torch.manual_seed(args.seed)
    overrides = {**(TINY_CLIP if args.tiny else {}), **json.loads(args.overrides or "{}")}
    conditioner = CLIPTextConditioner.from_config(caption_vocabulary(), **overrides)
    width, layers = (16, 1) if args.tiny else (args.vision_width, args.vision_layers)
    clip = clip_model_for(conditioner, images.shape[-1], width=width, layers=layers, patch=8)
    if args.grad_accum != 1:
        raise SystemExit("--grad-accum must be 1 for clip: the contrastive loss needs the whole batch at once")
    trainer = Trainer(out, {"clip": clip}, loop_config(args), tokenizers={"clip": conditioner.tokenizer})
    tokenizer = conditioner.tokenizer = trainer.tokenizers["clip"]  # the checkpoint's, the same on every process
    device = trainer.device
    images = images.to(device)

    def step(i: int) -> tuple[torch.Tensor, dict]:
        idx = trainer.shard(batch_indices(i, args.batch, len(images), args.seed))
        tokens = tokenizer(
            [captions[j] for j in idx],
            padding="max_length",
            truncation=True,
            max_length=conditioner.max_length,
            return_tensors="pt",
        ).to(device)
        x = to_float(images[idx]).to(device)
        result = clip(**tokens, pixel_values=x)
        text, image = trainer.gather(result.text_embeds), trainer.gather(result.image_embeds)
        return contrastive_loss(clip.logit_scale.exp() * text @ image.t()), {}

    history = trainer.run(step)
    if not trainer.is_main:
        return out / "final"
    with trainer.ema_weights():
        clip.eval()
        metrics = zero_shot_on(clip, tokenizer, conditioner.max_length, 256, args.data_seed + 2, device)
        clip.cpu().save_pretrained(out / "final-clip")
        tokenizer.save_pretrained(out / "final-clip")
        text = CLIPTextConditioner.from_clip_model(clip, tokenizer)
        text.save_pretrained(out / "final")
    write_metrics(out, {**metrics, "history": history[-3:]})
    return out / "final"


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE loss over a batch's text-image similarities (Radford et al. 2021, Fig. 3)."""
    labels = torch.arange(len(logits_per_text), device=logits_per_text.device)
    ce = torch.nn.functional.cross_entropy
    return (ce(logits_per_text, labels) + ce(logits_per_text.t(), labels)) / 2


def features(output: Any) -> torch.Tensor:
    """transformers 5 returns the projected embeddings as `pooler_output`; older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def zero_shot_on(clip: Any, tokenizer: Any, max_length: int, n: int, seed: int, device: torch.device) -> dict:
    """CLIP zero-shot on n fresh images: among captions differing only in shape colour (or kind), pick the closest."""
    from zoo.data.shapes import PALETTE, SHAPES, pregenerate

    data = pregenerate(n, seed=seed, split="all")
    image_embeds = torch.nn.functional.normalize(
        features(clip.get_image_features(pixel_values=data["images"].to(device))), dim=-1
    )

    def accuracy(field: str, values: list[str]) -> float:
        correct = 0
        for k, a in enumerate(data["attributes"]):
            options = [v for v in values if not (field == "colour" and v == a.background)]
            swap = [(v, a.shape) if field == "colour" else (a.colour, v) for v in options]
            texts = [f"a {colour} {shape} on a {a.background} background" for colour, shape in swap]
            tokens = tokenizer(texts, padding="max_length", max_length=max_length, return_tensors="pt").to(device)
            text_embeds = torch.nn.functional.normalize(features(clip.get_text_features(**tokens)), dim=-1)
            correct += options[int((text_embeds @ image_embeds[k]).argmax())] == getattr(a, field)
        return correct / len(data["attributes"])

    return {"zero_shot_colour": accuracy("colour", list(PALETTE)), "zero_shot_shape": accuracy("shape", list(SHAPES))}


# ---------------------------------------------------------------------------------------------- diffusion
def frozen_bert(args: Any, recipe: Any, trained: bool) -> bool:
    """Whether --freeze-conditioner keeps the trained BERT fixed; refused where there is none to keep (a CLIP tower
    is always frozen)."""
    if not getattr(args, "freeze_conditioner", False):
        return False
    if recipe.conditioner is None or recipe.conditioner.name != "bert":
        raise SystemExit(f"--freeze-conditioner keeps a trained BERT fixed; {recipe.name} has no BERT conditioner")
    if not trained:
        raise SystemExit("--freeze-conditioner keeps a trained BERT fixed: give it with --conditioner (or --init)")
    return True


def build_for_training(args: Any) -> Any:
    """The pipeline with random U-Net, and the trained autoencoder / frozen CLIP tower from earlier stages."""
    from zoo.assembly import assemble
    from zoo.build import load_pipeline
    from zoo.build import recipe as registered_recipe
    from zoo.pipeline_io import load_part
    from zoo.registry import SCHEDULES

    if args.init:  # continue from a saved pipeline (e.g. the embedded weights); frozen parts stay frozen
        pipe = load_pipeline(args.init, device="cpu")
        target = registered_recipe(args.pipeline)
        changes = {**json.loads(args.overrides or "{}"), **({"objective": args.objective} if args.objective else {})}
        if target.concat_image and not pipe.recipe.concat_image:  # e.g. a trained text model -> ldm-inpaint-kl
            pipe = widened(pipe, target.replace(**changes))  # the U-Net's overrides (noise levels) built in
        if changes:  # e.g. {"prediction_type": "v"}: fine-tune the same network to a new target or objective
            pipe.recipe = pipe.recipe.replace(**changes)
        if "schedule" in changes:  # e.g. {"schedule": {"zero_terminal_snr": true}}: train on the new schedule too
            pipe.schedule = SCHEDULES.build(pipe.recipe.schedule.name, **pipe.recipe.schedule.kwargs)
        freeze = frozen_bert(args, pipe.recipe, trained=True)
        for role, module in pipe.modules().items():
            bert = role == "conditioner" and pipe.recipe.conditioner.name == "bert"
            trainable = role == "unet" or (bert and not freeze)
            module.requires_grad_(trainable)
        return pipe
    recipe = registered_recipe(args.pipeline)
    changes = {**json.loads(args.overrides or "{}"), **({"objective": args.objective} if args.objective else {})}
    if changes:
        recipe = recipe.replace(**changes)  # validated at once: --objective vlb with a learned variance override
    freeze = frozen_bert(args, recipe, trained=bool(args.conditioner))
    trained = {}
    if recipe.autoencoder is not None:
        if not args.autoencoder:
            raise SystemExit(f"{recipe.name} is a latent pipeline: pass --autoencoder <trained autoencoder folder>")
        trained["autoencoder"] = load_part("autoencoder", recipe.autoencoder.name, args.autoencoder)
    if recipe.conditioner is not None and recipe.conditioner.name == "clip":
        if not args.conditioner:
            raise SystemExit(f"{recipe.name} uses the CLIP text tower: pass --conditioner <trained CLIP folder>")
        trained["conditioner"] = load_part("conditioner", "clip", args.conditioner)
    for module in trained.values():
        module.requires_grad_(False)
    if recipe.conditioner is not None and recipe.conditioner.name == "bert" and args.conditioner:
        # warm start: a BERT trained jointly with another pipeline's U-Net, trained on here (LDM trains its
        # BERT with the U-Net), or kept fixed with --freeze-conditioner, as the CLIP tower always is; it brings
        # its own vocabulary (tokenizer.json)
        trained["conditioner"] = load_part("conditioner", "bert", args.conditioner)
        trained["conditioner"].requires_grad_(not freeze)
    rows = None  # --class-tokens-from: the class table's start (class_tokens_from_text)
    if getattr(args, "class_tokens_from", None):
        if recipe.conditioner is None or recipe.conditioner.name != "class":
            raise SystemExit(f"--class-tokens-from starts class labels' tokens; {recipe.name} takes no class labels")
        rows, null_tokens = class_tokens_from_text(load_part("conditioner", "clip", args.class_tokens_from))
        recipe = recipe.replace(conditioner={"tokens": rows.shape[1], "null_tokens": null_tokens})
    pipe = assemble(recipe, trained, tiny=args.tiny, device="cpu")
    if rows is not None:
        if rows.shape[0] != pipe.conditioner.null_class + 1 or rows.shape[2] != pipe.conditioner.dim:
            raise SystemExit(
                f"--class-tokens-from {args.class_tokens_from}: {rows.shape[0] - 1} classes of width {rows.shape[2]}, "
                f"but {recipe.name} has {pipe.conditioner.null_class} classes of width {pipe.conditioner.dim}"
            )
        with torch.no_grad():
            pipe.conditioner.embedding.weight.copy_(rows.flatten(1))
    if getattr(args, "unet_from", None):  # warm start: another pipeline's trained U-Net of the same architecture
        source = load_part("unet", recipe.unet.name, args.unet_from).state_dict()
        if recipe.concat_image:  # e.g. a text model's U-Net for ldm-sr-kl: the extra inputs start at zero
            source = widened_state(source, pipe.unet)
        try:
            pipe.unet.load_state_dict(source, strict=True)
        except RuntimeError as error:
            raise SystemExit(
                f"--unet-from {args.unet_from}: not the architecture of {recipe.name}'s U-Net: {error}"
            ) from None
    return pipe


@torch.no_grad()
def class_tokens_from_text(text_encoder: Any) -> tuple[torch.Tensor, int]:
    """A start for the class table (components/conditioners/class_label.py) from a trained text tower: class k's
    tokens are the encoder's tokens for its name in the dataset's caption form, 'a {colour} {shape} on a {background}
    background', averaged over the backgrounds (a label fixes colour and shape, not the background); the null class's
    are the empty prompt's, the classifier-free-guidance input the text model was trained with. Returns the rows
    (num_classes + 1, tokens, dim) and the null class's token count. Every class's caption must encode to the same
    number of tokens (they do for this dataset's one-word names), or the mean would mix positions."""
    from zoo.data.shapes import PALETTE, SHAPES, Attributes

    text_encoder.eval()
    rows = []
    for shape in SHAPES:  # in label order: Attributes.class_label is shape index * len(PALETTE) + colour index
        for colour in PALETTE:
            kinds = [Attributes(shape, colour, bg) for bg in PALETTE if bg != colour]
            tokens, mask = text_encoder([a.caption(include_size=False, include_position=False) for a in kinds])
            lengths = set(mask.sum(1).tolist())
            if len(lengths) != 1:
                raise ValueError(f"the captions of class {colour} {shape} encode to {sorted(lengths)} tokens")
            rows.append(tokens[:, : lengths.pop()].float().mean(0))
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"class names encode to {sorted({len(r) for r in rows})} tokens: one length is needed")
    empty, mask = text_encoder([""])
    null_tokens = int(mask.sum())
    null = torch.zeros_like(rows[0])
    null[:null_tokens] = empty[0, :null_tokens].float()
    return torch.stack([*rows, null]), null_tokens


def widened(pipe: Any, target: Any) -> Any:
    """`pipe`'s trained parts in a pipeline named as `target` whose U-Net also takes target's concatenated image
    input (the inpainting model's mask and masked latent, or the super-resolution model's low-res image, and its
    noise level's class embedding): the new inputs start at zero, so the network first computes exactly what the
    trained one did (how SD inpainting was fine-tuned from SD)."""
    from zoo.assembly import assemble, concat_image_channels

    extra = concat_image_channels(target.concat_image, pipe.autoencoder.latent_channels)
    unet = {"concat_channels": pipe.unet.config.concat_channels + extra}
    if target.unet.kwargs.get("num_classes") is not None:  # the noise level of super-resolution's augmentation
        unet["num_classes"] = target.unet.kwargs["num_classes"]
    fields = ("guidance_scale", "cfg_dropout", "noise_augmentation")  # sampling and training defaults: target's
    recipe = pipe.recipe.replace(
        name=target.name,
        description=target.description,
        unet=unet,
        concat_image=target.concat_image,
        **{field: getattr(target, field) for field in fields},
    )
    parts = {role: module for role, module in pipe.modules().items() if role != "unet"}
    new = assemble(recipe, parts, pretrained=True, device="cpu")
    new.unet.load_state_dict(widened_state(pipe.unet.state_dict(), new.unet), strict=True)
    return new


def widened_state(state: dict[str, torch.Tensor], unet: Any) -> dict[str, torch.Tensor]:
    """A trained U-Net's `state` for `unet`, which takes more conv_in inputs (x_t first, then the concatenated
    ones: their weights start at zero) and may add a class embedding (zero: it adds nothing to the time
    embedding). Every other tensor must match; load_state_dict(strict=True) says which does not."""
    target = unet.state_dict()
    weight = torch.zeros_like(target["conv_in.weight"])  # (C, in + concat, 3, 3)
    source = state["conv_in.weight"]
    if source.shape[1] > weight.shape[1] or source.shape[0] != weight.shape[0]:
        return state  # not a widening: strict loading names the mismatch
    weight[:, : source.shape[1]] = source
    key = "class_embedding.weight"
    extra = {key: torch.zeros_like(target[key])} if key in target and key not in state else {}
    return {**state, "conv_in.weight": weight, **extra}


def train_diffusion(args: Any) -> Path:
    """The recipe's objective on cached latents (LDM) or pixels, with condition dropout for CFG: L_simple (DDPM
    Eq. 14, Alg. 1), or the bound / hybrid with a learned variance (improved DDPM Secs. 3.1, 3.3; losses.py)."""
    from components.schedulers.losses import LossSecondMomentSampler, diffusion_loss
    from zoo.train.conditioning import TrainingCondition

    out = Path(args.out)
    torch.manual_seed(args.seed)
    pipe = build_for_training(args)
    recipe = pipe.recipe
    if args.snr_gamma is not None and recipe.objective != "simple":
        raise SystemExit(
            f"--snr-gamma weights L_simple (Min-SNR); objective {recipe.objective!r} has the bound's weights"
        )
    if args.split != "train" and recipe.concat_image != "low_res":
        raise SystemExit(
            f"--split {args.split} trains {recipe.name} on the held-out colour-shape pairs, which its evaluation"
            " keeps unseen to measure compositional generalisation; only a super-resolution model (whose condition"
            " names no pair) trains on all pairs"
        )
    data = cached_dataset(args.cache, args.samples, seed=args.data_seed, split=args.split)
    trainables = {role: m for role, m in pipe.modules().items() if any(p.requires_grad for p in m.parameters())}
    text = trainables.get("conditioner")
    text = text if text is not None and text.kind == "text" else None
    # improved DDPM Sec. 3.3: t importance-sampled for L_vlb; its loss history is checkpointed with the weights
    sampler = LossSecondMomentSampler(pipe.num_timesteps) if recipe.objective == "vlb" else None
    modules = {**trainables, **({"timestep_sampler": sampler} if sampler else {})}
    trainer = Trainer(out, modules, loop_config(args), tokenizers={"conditioner": text.tokenizer} if text else None)
    if text:  # a text encoder trained here (BERT) with its own new vocabulary: the checkpoint's, on every process
        text.tokenizer = trainer.tokenizers["conditioner"]
    device = trainer.device
    pipe.to(device)
    for module in trainables.values():
        module.train()
    with process_state().main_process_first():  # under a launch the main process encodes, the others read
        x0_all = encode_all(pipe, data["images"], device, args.cache) if recipe.kind == "latent" else data["images"]
    x0_all = downsample(x0_all, recipe.image_size) if recipe.kind == "pixel" else x0_all
    x0_all = x0_all.to(device)
    condition = TrainingCondition(pipe, data, device, dropout=recipe.cfg_dropout)
    generator = torch.Generator(device="cpu")

    def step(i: int) -> tuple[torch.Tensor, dict]:
        # Step i's draws (samples, condition dropout, t, eps) are made for the whole global batch from one seed,
        # then cut to this process's part: N processes train exactly what one process trains on the whole batch.
        idx = batch_indices(i, args.batch, len(x0_all), args.seed)
        generator.manual_seed(args.seed * 7_919 + i)
        kwargs = {k: trainer.shard(v) for k, v in condition.batch(idx, generator).items()}  # (a BERT runs on all)
        t = trainer.shard(torch.randint(0, pipe.schedule.num_timesteps, (len(idx),), generator=generator))
        eps = trainer.shard(torch.randn((len(idx), *x0_all.shape[1:]), generator=generator))
        x0 = x0_all[trainer.shard(idx)].to(device)
        x0 = to_float(x0) if x0.dtype == torch.uint8 else x0
        if recipe.objective != "simple":  # hybrid / vlb: objective_loss draws t (importance-sampled for vlb)
            return objective_step(pipe, x0, kwargs, generator, sampler)
        loss = diffusion_loss(
            pipe.unet,
            x0,
            pipe.schedule,
            prediction_type=recipe.prediction_type,
            model_kwargs=kwargs,
            snr_gamma=args.snr_gamma,
            t=t.to(device),
            noise=eps.to(device),
        )
        return loss, {}

    def sample(path: Path) -> None:
        pipe.to(device)
        grid(condition.sample_images(pipe, seed=0)).save(path)
        for module in trainables.values():
            module.train()

    history = trainer.run(step, sample)
    if not trainer.is_main:
        return out / "final"
    with trainer.ema_weights():
        pipe.to("cpu").save_pretrained(out / "final")
    write_metrics(out, {"history": history[-3:]})
    return out / "final"


def objective_step(
    pipe: Any, x0: torch.Tensor, kwargs: dict, generator: torch.Generator, sampler: Any
) -> tuple[torch.Tensor, dict]:
    """One batch of the hybrid or vlb objective (losses.objective_loss), and what to log (the bound term, bits/dim)."""
    from components.schedulers.losses import objective_loss

    recipe = pipe.recipe
    result = objective_loss(
        pipe.unet,
        x0,
        pipe.schedule,
        objective=recipe.objective,
        model_variance=recipe.variance,
        prediction_type=recipe.prediction_type,
        model_kwargs=kwargs,
        timestep_sampler=sampler,
        generator=generator,
    )
    if sampler is not None:
        sampler.update(result.t, result.vlb)
    return result.loss, {"mse": float(result.mse.detach().mean()), "vlb_term_bits": float(result.vlb.detach().mean())}


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (N, 3, size, size) by averaging H / size x H / size blocks (the area the smaller pixel
    covers), rounded back to 8-bit levels so the bound's 256 bins still hold the data."""
    factor = images.shape[-1] // size
    if factor == 1:
        return images
    if images.dtype != torch.uint8 or images.shape[-1] != factor * size:
        raise ValueError(f"cannot downsample {images.dtype} images of side {images.shape[-1]} to {size}")
    chunks = [F.avg_pool2d(chunk.float(), factor).round().to(torch.uint8) for chunk in images.split(4096)]
    return torch.cat(chunks)


@torch.no_grad()
def encode_all(pipe: Any, images: torch.Tensor, device: torch.device, cache: Path | None = None) -> torch.Tensor:
    """The training set's latents z = scaling_factor * E(x), computed once (the point of LDM: train on z) and
    cached in `cache` under a digest of what z depends on (the encoder, quant_conv, the scaling factor) and the
    images, so every later run on the same encoder starts at once (encoding 50,000 images takes minutes on a CPU),
    also after the decoder was fine-tuned or grown (`zoo.train decoder`: the latents are the same)."""
    ae = pipe.autoencoder.eval()
    digest = hashlib.sha256(repr(float(ae.scaling_factor)).encode())
    for key, value in sorted(ae.state_dict().items()):
        if key.startswith(("encoder.", "quant_conv.")):  # E(x) in both trees (kl.py, vq.py); not the decoder side
            digest.update(key.encode() + value.detach().cpu().float().numpy().tobytes())
    digest.update(images.numpy().tobytes())
    file = Path(cache) / f"latents-{digest.hexdigest()[:16]}.safetensors" if cache else None
    if file is not None and file.is_file():
        return load_file(file)["latents"]
    latents = [ae.encode(to_float(images[i : i + 256]).to(device)).float().cpu() for i in range(0, len(images), 256)]
    latents = torch.cat(latents) * ae.scaling_factor
    if file is not None:  # written whole under a temporary name, then renamed: never a half-written cache
        tmp = file.with_suffix(f".tmp{os.getpid()}")
        save_file({"latents": latents.contiguous()}, tmp)
        tmp.rename(file)
    return latents
