"""`python -m zoo.evaluate <name>`: how well a pipeline does what it is asked, measured from pixels.

    python -m zoo.evaluate ldm-clip-kl                 # the embedded weights
    python -m zoo.evaluate ldm-clip-kl --save          # also writes zoo/weights/<name>/evaluation.json

Prompt adherence: images generated from fixed captions (seen and held-out colour-shape pairs, separately)
are read back by the pixel analyser (zoo/data/analyser.py) and compared with what the caption names.
Also: reconstruction PSNR and VQ codebook usage of the autoencoder on held-out images, the CLIP model's
zero-shot accuracy, bits/dim of pixel models from the variational bound, and the time per image.
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

import torch

import zoo
from zoo.build import embedded_weights
from zoo.data.analyser import accuracy_table, analyse, score
from zoo.data.shapes import Attributes, eval_prompts, pregenerate, render
from zoo.train.stages import psnr, zero_shot_on

logger = logging.getLogger(__name__)
CLIP_FOLDER = Path(__file__).parent / "weights" / "clip-shapes"


def adherence(pipe: Any, split: str, n: int, *, seed: int = 0, **settings: Any) -> dict[str, float] | None:
    """Per-attribute accuracy and all-correct over `n` evaluation prompts of `split` ("seen" / "heldout")."""
    kind = condition_kind(pipe)
    if kind is None:
        return None
    scores = []
    for k, (caption, wanted) in enumerate(eval_prompts(split, n=n, seed=seed)):
        kwargs: dict[str, Any] = {"seed": seed + k, **settings}
        if kind == "text":
            kwargs["prompt"] = caption
        elif kind == "class":
            kwargs["prompt"] = wanted.class_label
            wanted = {"shape": wanted.shape, "colour": wanted.colour}
        if kind == "seg":  # the map fixes shape, size and position; colours are free
            full = Attributes(
                wanted.shape, wanted.colour, wanted.background, wanted.size or "large", wanted.position or "center"
            )
            kwargs["semantic_map"] = torch.from_numpy(render(full)[1])
            wanted = {"shape": full.shape, "size": full.size, "position": full.position}
        image = pipe.generate(**kwargs)[0]
        scores.append(score_partial(analyse(image), wanted))
    return accuracy_table(scores)


def score_partial(analysis: Any, wanted: Attributes | dict[str, str]) -> dict[str, bool]:
    if isinstance(wanted, Attributes):
        return score(analysis, wanted)
    return {name: getattr(analysis, name) == value for name, value in wanted.items()}


def condition_kind(pipe: Any) -> str | None:
    """What the pipeline is conditioned on: "text", "class", "seg", or None (unconditional)."""
    if getattr(pipe, "conditioner", None) is not None:
        return "text" if hasattr(pipe.conditioner, "unknown_words") else "class"
    return "seg" if getattr(pipe, "spatial", None) is not None else None


@torch.no_grad()
def reconstruction(pipe: Any, n: int = 256, seed: int = 12345) -> dict[str, float] | None:
    """PSNR (dB) of decode(encode(x)) on images the autoencoder never saw; codebook usage for VQ."""
    ae = getattr(pipe, "autoencoder", None)
    if ae is None:
        return None
    x = pregenerate(n, seed=seed, split="all")["images"].to(pipe.device)
    z = torch.cat([ae.encode(chunk) for chunk in x.split(64)])
    rec = torch.cat([ae.decode(chunk) for chunk in z.split(64)])
    result = {"psnr_db": psnr(rec, x)}
    if hasattr(ae, "quantize"):
        _, indices, _ = ae.quantize(z)
        counts = torch.bincount(indices.flatten(), minlength=ae.config.num_embeddings).float()
        p = counts / counts.sum()
        result["codes_used"] = int((counts > 0).sum())
        result["codebook_size"] = int(ae.config.num_embeddings)
        result["perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return result


@torch.no_grad()
def clip_zero_shot(n: int = 256, seed: int = 777) -> dict[str, float] | None:
    """The shipped CLIP model: among captions differing only in colour (or shape), pick the closest to each image."""
    if not (CLIP_FOLDER / "config.json").is_file():
        return None
    from transformers import AutoTokenizer, CLIPModel

    clip = CLIPModel.from_pretrained(CLIP_FOLDER, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(CLIP_FOLDER)
    return zero_shot_on(clip, tokenizer, clip.config.text_config.max_position_embeddings, n, seed, torch.device("cpu"))


@torch.no_grad()
def bits_per_dim(pipe: Any, n: int = 16, seed: int = 4321, exact_below: int = 50, stride: int = 10) -> float | None:
    """Negative log-likelihood bound of a pixel model in bits/dim (DDPM Sec. 4.2, Eq. 5), on held-out images.

    L = L_T + sum_{t>=1} L_{t-1} + L_0 (nats/dim, / ln 2). The KL terms concentrate at small t, so those
    below `exact_below` are summed exactly and the rest estimated from every `stride`-th term (their mean
    times their count). Model variance: beta tilde ("fixed_small").
    """
    if getattr(pipe, "autoencoder", None) is not None:
        return None
    from components.schedulers.losses import vlb_terms

    T = pipe.num_timesteps
    x = pregenerate(n, seed=seed, split="all")["images"].to(pipe.device)
    model = lambda x_t, t: pipe.unet(x_t, t)  # noqa: E731
    options = {"prediction_type": pipe.recipe.prediction_type, "generator": torch.Generator("cpu").manual_seed(seed)}
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
    pipe.generate(**kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe.generate(**kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def evaluate(
    name: str,
    *,
    prompts: int = 48,
    weights: str | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    guidance_scale: float | None = None,
) -> dict:
    """Every measure that applies to the pipeline, at its recipe's settings unless given."""
    pipe = zoo.build(name, weights=weights)
    settings = {"steps": steps or pipe.recipe.steps, "sampler": sampler or pipe.recipe.sampler}
    if pipe.recipe.kind == "latent":
        settings["guidance_scale"] = pipe.recipe.guidance_scale if guidance_scale is None else guidance_scale
    result: dict[str, Any] = {
        "pipeline": name,
        "weights": "trained" if pipe.pretrained else "random",
        **settings,
        "threads": torch.get_num_threads(),
    }
    result["adherence_seen"] = adherence(pipe, "seen", prompts, **settings)
    result["adherence_heldout"] = adherence(pipe, "heldout", prompts, **settings)
    result["reconstruction"] = reconstruction(pipe)
    if condition_kind(pipe) == "text" and pipe.recipe.conditioner.name == "clip":
        result["clip_zero_shot"] = clip_zero_shot()
    result["bits_per_dim"] = bits_per_dim(pipe)
    result["seconds_per_image"] = seconds_per_image(pipe, **settings)
    return result


def table(result: dict) -> str:
    """The result as a Markdown table (what the README shows)."""
    rows = [("pipeline", result["pipeline"]), ("weights", result["weights"])]
    guidance = f", guidance {result['guidance_scale']}" if "guidance_scale" in result else ""
    rows.append(("settings", f"{result['sampler']}, {result['steps']} steps{guidance}"))
    for split in ("seen", "heldout"):
        if acc := result.get(f"adherence_{split}"):
            parts = ", ".join(f"{k} {v:.0%}" for k, v in acc.items() if k not in ("count",))
            rows.append((f"adherence, {split} pairs (n={int(acc.get('count', 0))})", parts))
    if rec := result.get("reconstruction"):
        rows.append(
            ("autoencoder", ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()))
        )
    if zs := result.get("clip_zero_shot"):
        rows.append(("CLIP zero-shot", ", ".join(f"{k} {v:.0%}" for k, v in zs.items())))
    if result.get("bits_per_dim") is not None:
        rows.append(("bits/dim (VLB bound)", f"{result['bits_per_dim']:.3f}"))
    rows.append((f"seconds per image ({result['threads']} threads)", f"{result['seconds_per_image']:.2f}"))
    return "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zoo.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="+", help="pipeline name(s)")
    parser.add_argument("--prompts", type=int, default=48, help="prompts per split")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the recipe's)")
    parser.add_argument("--sampler", default=None, help="ddpm, ddim or dpmpp (default: the recipe's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the recipe's)")
    parser.add_argument("--weights", default=None, help="a folder or Hub repo instead of the embedded weights")
    parser.add_argument("--save", action="store_true", help="write evaluation.json next to the embedded weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in args.name:
        result = evaluate(
            name,
            prompts=args.prompts,
            weights=args.weights,
            steps=args.steps,
            sampler=args.sampler,
            guidance_scale=args.guidance,
        )
        print(table(result) + "\n")  # noqa: T201 (the command's output)
        if args.save and (folder := embedded_weights(name)):
            (folder / "evaluation.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
