"""`python -m zoo.train <stage> ...`: train one stage, export weights, or run the whole shipped plan.

    python -m zoo.train autoencoder --name kl-f4 --out runs/kl-f4
    python -m zoo.train decoder --autoencoder runs/kl-f4/final --out runs/kl-f4-decoder  # encoder frozen
    python -m zoo.train clip --out runs/clip
    python -m zoo.train diffusion --pipeline ldm-clip-kl --autoencoder runs/kl-f4/final \
        --conditioner runs/clip/final --out runs/ldm-clip-kl
    python -m zoo.train export --run runs/ldm-clip-kl/final --to zoo/weights/ldm-clip-kl
    python -m zoo.train diffusion --pipeline ddpm-hybrid-32 --objective hybrid --out runs/ddpm-hybrid-32
    python -m zoo.train plan [--only NAME ...]        # every shipped model, in order, resumable
    python -m zoo.train plan --only loss-study        # the same 32x32 model with simple / hybrid / vlb

Every run resumes from <out>/checkpoint when started again with the same --out, on any number of processes.
Distributed (data parallel; --batch is the global batch, split over the processes and --grad-accum):

    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu.yaml -m zoo.train diffusion ...
    accelerate launch --config_file configs/accelerate/gpus.yaml --num_processes 8 -m zoo.train diffusion ...
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from components.schedulers.losses import OBJECTIVES
from zoo.train import plan as shipped
from zoo.train.export import export


def common(parser: argparse.ArgumentParser, *, steps: int, batch: int, lr: float) -> None:
    parser.add_argument("--out", required=True, help="run folder: checkpoint/, final/, samples-*.png, log.jsonl")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--samples", type=int, default=50_000, help="size of the pre-generated training set")
    parser.add_argument("--cache", default="runs/data", help="where the pre-generated training set is cached")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--overrides", default="", help="JSON keyword arguments for the part (or recipe)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--tiny", action="store_true", help="the parts' tiny variants (smoke tests)")
    parser.add_argument(
        "--max-minutes", type=float, default=0,
        help="a time box: stop and finish (final/) after this wall time, the lr decayed by the time used",
    )  # fmt: skip
    parser.add_argument(
        "--pause-after-minutes", type=float, default=0,
        help="a guard for a step budget: after this wall time save a checkpoint and exit 75 without final/; the "
        "same command continues to --steps (the lr follows the steps)",
    )  # fmt: skip
    parser.add_argument("--log-every", type=int, default=50, help="optimiser steps per log.jsonl line")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step (per process)")
    parser.add_argument("--processes", type=int, help="stop unless the launcher started exactly this many processes")
    parser.add_argument(
        "--mixed-precision", default="auto", choices=["auto", "no", "bf16"], help="auto: bf16 on a GPU that has it"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m zoo.train", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="stage", required=True)
    ae = sub.add_parser("autoencoder", help="a KL or VQ autoencoder")
    ae.add_argument("--name", default="kl-f4", help="registered autoencoder name")
    ae.add_argument(
        "--split", default="train", choices=("train", "all"),
        help="the training images' colour-shape pairs: train = the 18 seen pairs; all = all 24, as the shipped "
        "autoencoders' decoders are since session 13 (an autoencoder reads no caption: the held-out pairs are held "
        "out from what does, the conditioner and the U-Net; README \"Which pairs each part sees\")",
    )  # fmt: skip
    common(ae, steps=6000, batch=32, lr=5e-4)
    dec = sub.add_parser(
        "decoder", help="fine-tune a trained autoencoder's decoder, its encoder frozen (latents unchanged)"
    )
    dec.add_argument("--autoencoder", required=True, help="the trained autoencoder folder")
    dec.add_argument("--name", default="kl-f4", help="its registered autoencoder name")
    dec.add_argument(
        "--loss", default="recipe", choices=("recipe", "contrast-l1"),
        help="recipe: the autoencoder's own reconstruction loss; contrast-l1: L1 weighted by 1 / each image's content",
    )  # fmt: skip
    dec.add_argument(
        "--grow-decoder", type=int, default=0, metavar="N",
        help="first add N resnets to each decoder level, each starting as the identity (deeper, the same output)",
    )  # fmt: skip
    dec.add_argument(
        "--latents", default="sample", choices=("sample", "mode"),
        help="what the decoder learns to decode: sample, z ~ q(z|x) (LDM's autoencoder loss; what img2img and "
        "inpainting encode, as diffusers does); mode, the posterior mean (what diffusion trains on and samples "
        "approximate). A VQ autoencoder has one z either way",
    )  # fmt: skip
    dec.add_argument(
        "--split", default="train", choices=("train", "all"),
        help="the training images' colour-shape pairs: train = the 18 seen pairs; all = all 24, as the shipped "
        "decoders since session 13 (a decoder reads no caption; README \"Which pairs each part sees\")",
    )  # fmt: skip
    common(dec, steps=4000, batch=32, lr=1e-4)
    clip = sub.add_parser("clip", help="a small CLIP model, contrastively; its text tower becomes the conditioner")
    clip.add_argument("--vision-width", type=int, default=128)
    clip.add_argument("--vision-layers", type=int, default=3)
    common(clip, steps=3000, batch=256, lr=5e-4)
    diffusion = sub.add_parser("diffusion", help="a pixel or latent diffusion model (any registered pipeline)")
    diffusion.add_argument("--pipeline", required=True)
    diffusion.add_argument("--autoencoder", help="trained autoencoder folder (latent pipelines)")
    diffusion.add_argument(
        "--conditioner",
        help="trained CLIP text tower (frozen), or a trained BERT (a warm start, trained on)",
    )
    diffusion.add_argument(
        "--freeze-conditioner",
        action="store_true",
        help="keep a trained BERT given by --conditioner (or --init) fixed instead of training it on: the 2x2 grid's "
        "BERT models then share one BERT, and a copy of it starts the plan again as it started before",
    )
    diffusion.add_argument("--init", help="start from a saved pipeline folder (e.g. zoo/weights/ldm-clip-kl)")
    diffusion.add_argument(
        "--unet-from",
        help="start the U-Net from this trained U-Net folder (same architecture; for an inpainting or "
        "super-resolution recipe also a text model's, its extra inputs zero-initialised)",
    )
    diffusion.add_argument(
        "--class-tokens-from",
        metavar="CLIP_FOLDER",
        help="a class pipeline: start each label's tokens from this text tower's encoding of the class's caption "
        "(with --unet-from a text model's U-Net, it reads the labels from the first step)",
    )
    diffusion.add_argument("--snr-gamma", type=float, default=None, help="Min-SNR-gamma loss weighting (e.g. 5)")
    diffusion.add_argument(
        "--split",
        default="train",
        choices=("train", "all"),
        help="the training images' colour-shape pairs: train = the 18 seen pairs (the held-out 6 measure "
        "compositional generalisation of what a condition names), all = all 24 (a model whose condition names "
        "no colour or shape, the super-resolution one, has nothing to generalise and no reason to miss a pair)",
    )
    diffusion.add_argument(
        "--objective",
        choices=OBJECTIVES,
        help="simple (DDPM Eq. 14), hybrid or vlb (improved DDPM; they need the recipe's variance 'learned'); "
        "default: the recipe's",
    )
    common(diffusion, steps=8000, batch=64, lr=3e-4)
    exp = sub.add_parser("export", help="copy a trained pipeline into zoo/weights, in float16 safetensors")
    exp.add_argument("--run", required=True, help="a pipeline folder written by save_pretrained (<run>/final)")
    exp.add_argument("--to", required=True)
    exp.add_argument(
        "--dtype",
        default="float16",
        choices=["float16", "float32", "int8"],
        help="int8: the zoo's parts' large weights int8 with per-channel scales, the rest float16 (zoo/weights)",
    )
    exp.add_argument(
        "--share", action="store_true", help="store a part identical to another pipeline's in --to's folder once"
    )
    exp.add_argument(
        "--part",
        action="append",
        default=[],
        metavar="ROLE=FOLDER",
        help="replace a part by this folder (same config, new weights), e.g. autoencoder=runs/kl-f4-decoder/final",
    )
    pl = sub.add_parser("plan", help="every shipped model in order (each stage resumes or is skipped when done)")
    pl.add_argument("--runs", default="runs")
    pl.add_argument("--weights", default="zoo/weights", help="where the exports go")
    pl.add_argument("--only", nargs="*", help="run only these plan entries")
    pl.add_argument("--jobs", type=int, default=1, help="stages run at once (1 on a CPU; ~5 on a GPU)")
    pl.add_argument("--preset", default="cpu", choices=sorted(shipped.PRESETS), help="per-stage batch/steps/time box")
    pl.add_argument("--print", action="store_true", help="print the commands instead of running them")
    pl.add_argument("extra", nargs="*", help="arguments added to every training stage, after --")
    return p


def part_arguments(values: list[str]) -> dict[str, Path]:
    """--part ROLE=FOLDER, repeated -> {role: folder}."""
    parts = {}
    for value in values:
        role, sep, folder = value.partition("=")
        if not sep or not role or not folder:
            raise SystemExit(f"--part {value!r}: expected ROLE=FOLDER, e.g. autoencoder=runs/kl-f4-decoder/final")
        parts[role] = Path(folder)
    return parts


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)
    if args.stage == "export":
        export(Path(args.run), Path(args.to), dtype=args.dtype, share=args.share, parts=part_arguments(args.part))
    elif args.stage == "plan":
        if args.print:
            for name, argv_, _ in shipped.commands(args.runs, args.only, args.preset, args.weights):
                print(f"# {name}\npython -m zoo.train {shlex.join(argv_)}")  # noqa: T201 (the command's output)
        else:
            Path(args.runs).mkdir(parents=True, exist_ok=True)
            shipped.run_plan(args.runs, args.only, args.jobs, args.extra, args.preset, args.weights)
    else:
        from zoo.train import stages
        from zoo.train.loop import process_state

        process_state()  # before anything asks accelerate for a device: a distributed launch's ranks on the CPU

        {
            "autoencoder": stages.train_autoencoder,
            "decoder": stages.train_decoder,
            "clip": stages.train_clip,
            "diffusion": stages.train_diffusion,
        }[args.stage](args)


if __name__ == "__main__":
    main(sys.argv[1:])
