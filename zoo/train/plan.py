"""The shipped models and the exact commands that train them (README "Retraining" quotes these).

Each entry is `(name, argv for python -m zoo.train, names it needs first)`. `run_plan` runs them in
dependency order, one at a time (this CPU) or several at once (`--jobs N` on a GPU machine, where one
small model leaves the device mostly idle). A finished stage is skipped, a stopped one resumes.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from zoo.train.loop import PAUSED

logger = logging.getLogger(__name__)

# The cpu preset's from-scratch diffusion stages, picked from the ablation (README "Recipes that converge on this
# CPU"; ABLATION below): its base (batch 32 beat 64 in the same minutes, lr 3e-4) with Min-SNR-gamma 5, the row
# that read best (54% / 46% all-correct after 15 minutes against the base's 25% / 4% and 17% / 21%), one thread
# so two stages share the 2 cores (--jobs 2). A step budget (CPU_LDM_STEPS), not a time box: a 45-minute box held
# 6,457 steps on a quiet CPU and 3,763 on a contended one, and the lr decayed with the minutes, so the result
# depended on the machine's load. The guard pauses a stage that runs long (a checkpoint, no final/); the next
# run of the plan continues it.
CPU_LDM = [
    *("--batch", "32", "--lr", "3e-4", "--warmup", "100", "--snr-gamma", "5"),
    *("--pause-after-minutes", "90", "--threads", "1", "--samples", "12000", "--sample-every", "1000"),
    *("--checkpoint-every", "250"),
]
# Steps of 32 per from-scratch stage: what its shipped weights had. ldm-seg-kl's 45-minute box of session 10
# reached 4,006; the root's 6,457 are session 9's quiet 45-minute box (README "Retraining").
CPU_LDM_STEPS = {"ldm-clip-kl": 6457, "ldm-seg-kl": 4006}

# The shipped latent models: the 2x2 text grid (exactly one part changes between neighbours), the map- and
# class-conditioned models; each with the autoencoder stage it needs and whether it needs the CLIP stage.
LATENT: dict[str, tuple[str, bool]] = {
    "ldm-clip-kl": ("kl-f4", True),
    "ldm-clip-vq": ("vq-f4", True),
    "ldm-bert-kl": ("kl-f4", False),
    "ldm-bert-vq": ("vq-f4", False),
    "ldm-seg-kl": ("kl-f4", False),
    "ldm-class-kl": ("kl-f4", False),
    "ldm-inpaint-kl": ("kl-f4", True),
    "ldm-sr-kl": ("kl-f4", True),
}
# Fine-tuned from the trained text model in every preset (SD inpainting's recipe; LDM's SR model from a text one
# here, to fit the CPU): the new concatenated inputs start at zero (stages.widened).
FROM_TEXT_MODEL = ("ldm-inpaint-kl", "ldm-sr-kl")
# Its condition names no colour-shape pair, so its U-Net trains on all 24 in every preset (nothing held out to miss).
ALL_PAIRS = ("ldm-sr-kl",)
# How a stage starts in the cpu preset when not from scratch: the grid's partners (one part away from
# ldm-clip-kl) and the class model start from its U-Net, the BERT ones with the BERT kept fixed (so ldm-bert-kl and
# ldm-bert-vq share it, one part apart as the grid says, and the plan's copy of it starts every run the same), the
# inpainting model from the whole pipeline (its new mask / masked-latent input channels zero: stages.widened).
# "root" and "bert" are copies of the embedded weights (EMBEDDED_PARTS), made at the start of the plan.
CPU_WARM: dict[str, list[str]] = {
    "ldm-clip-vq": ["--unet-from", "{r}/root/final/unet"],
    "ldm-bert-kl": ["--unet-from", "{r}/root/final/unet", "--conditioner", "{r}/bert/final", "--freeze-conditioner"],
    # ldm-clip-vq's U-Net (already on VQ latents) with the same BERT: its two grid neighbours' parts
    "ldm-bert-vq": [
        *("--unet-from", "{r}/ldm-clip-vq/final/unet", "--conditioner", "{r}/bert/final", "--freeze-conditioner"),
    ],
    # the text model's U-Net, each label's tokens starting as the CLIP tower's tokens of its caption (stages.
    # class_tokens_from_text), so it reads labels from the first step; a gentler lr keeps that start
    "ldm-class-kl": [
        *("--unet-from", "{r}/root/final/unet", "--class-tokens-from", "{r}/clip/final"),
        *("--lr", "1e-4", "--warmup", "50"),
    ],
    "ldm-inpaint-kl": ["--init", "{r}/root/final"],
    "ldm-sr-kl": ["--init", "{r}/root/final"],
}
# Steps of 32 per warm-started stage (cpu preset), a budget as the from-scratch stages' (CPU_LDM_STEPS): the lr
# follows the steps, so the result does not depend on the CPU's load; about 0.5 s a step on one thread, 1.5 s for
# the inpainting model (each step also encodes the masked images).
CPU_WARM_STEPS = {
    "ldm-clip-vq": 6000,
    "ldm-bert-kl": 5000,
    "ldm-bert-vq": 4000,
    "ldm-class-kl": 4000,
    "ldm-inpaint-kl": 1800,
    "ldm-sr-kl": 5400,
}
# The warm-started stages' settings: batch 32, lr 2e-4, one thread each, so two run at once on 2 cores
# (--jobs 2); the 90-minute guard pauses a stage that runs long (the next run of the plan continues it).
CPU_WARM_ARGS = [
    *("--batch", "32", "--lr", "2e-4", "--warmup", "100", "--pause-after-minutes", "90"),
    *("--threads", "1", "--samples", "12000", "--sample-every", "100000", "--checkpoint-every", "100"),
]
# Continuation boxes (cpu preset): past its first box, a shipped model was trained on in further boxes, each
# `--init` the previous box's pipeline (the optimiser state starts afresh). Each box is a stage of its own,
# "<name>+<k>" in runs/<name>+<k>, resumable like the rest; the model's export takes its last box. Listed here
# is what made the shipped weights (README "Retraining"; zoo/weights/<name>/training.json): box by box, the
# flags that differ from CPU_MORE_ARGS.
CPU_MORE_ARGS = [
    *("--batch", "32", "--steps", "100000", "--lr", "1e-4", "--warmup", "50", "--threads", "1"),
    *("--samples", "12000", "--sample-every", "100000", "--checkpoint-every", "250"),
]
CPU_MORE: dict[str, list[list[str]]] = {
    # session 12: a step budget on top of its first stage (ldm-bert-vq starts from that first stage's U-Net)
    "ldm-clip-vq": [["--steps", "3000", "--pause-after-minutes", "90"]],
    # session 13: the same on top of its stage from the root
    "ldm-sr-kl": [["--steps", "3000", "--pause-after-minutes", "90"]],
}


def boxes(name: str, preset: str) -> list[str]:
    """The stage names (and runs/ folders) of `name`'s continuation boxes in `preset`, in order."""
    return [f"{name}+{k}" for k in range(1, len(CPU_MORE.get(name, [])) + 1)] if preset == "cpu" else []


def continuation_stages(
    name: str, r: str, data: list[str], preset: str
) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """(name, argv, needs) of each continuation box of `name`, each from the one before it."""
    stages, previous = [], name
    for box, flags in zip(boxes(name, preset), CPU_MORE.get(name, []), strict=False):
        argv = ["diffusion", "--pipeline", name, "--init", f"{r}/{previous}/final", "--out", f"{r}/{box}"]
        pairs = ["--split", "all"] if name in ALL_PAIRS else []
        stages.append((box, [*argv, *data, *CPU_MORE_ARGS, *pairs, *flags], (previous,)))
        previous = box
    return stages


PIXEL = ("ddpm-cosine", "ddpm-linear")
SHIPPED = (*LATENT, *PIXEL)
# The loss study (README "L_simple vs the bound"): one 32x32 model, three objectives, the same steps and batch
# (the same compute: the objectives differ only in the loss arithmetic). `--only loss-study` runs it alone.
LOSS_STUDY = ("ddpm-simple-32", "ddpm-hybrid-32", "ddpm-vlb-32")
# A step budget, not a time box, so every objective gets the same compute even when a run is interrupted and
# resumed; --max-minutes only guards the shared CPU (a boxed run continues when the command is run again).
LOSS_STUDY_ARGS = [
    *("--batch", "16", "--steps", "1000", "--lr", "4e-4", "--warmup", "100", "--threads", "1"),
    *("--pause-after-minutes", "14", "--sample-every", "300", "--checkpoint-every", "100"),
]
# The from-scratch ablation (issue 9; README "Recipes that converge on this CPU"): ldm-clip-kl's U-Net trained from
# random weights on the embedded KL-f4 and CLIP tower, each row changing one choice of the base (v-prediction,
# DDPM linear schedule, batch 32, lr 3e-4, EMA 0.999, model_channels 64) and all given the same CPU minutes on one
# thread, so two rows run at once on 2 cores (--jobs 2). `--only ablation` runs them; `python -m zoo.ablation`
# evaluates the finished rows and prints the table.
ABLATION_ARGS = [
    *("--batch", "32", "--steps", "100000", "--lr", "3e-4", "--warmup", "100", "--max-minutes", "15"),
    *("--threads", "1", "--samples", "12000", "--sample-every", "100000", "--checkpoint-every", "250"),
]
ABLATION: dict[str, tuple[str, list[str]]] = {
    "base": ("v-prediction, linear schedule, batch 32, lr 3e-4, EMA 0.999, width 64", []),
    "base-seed-1": ("none: the base with another seed (the table's noise floor)", ["--seed", "1"]),
    "eps": ("eps-prediction (DDPM)", ["--overrides", '{"prediction_type": "eps"}']),
    "min-snr-5": ("Min-SNR-gamma weighting, gamma 5 (Hang et al. 2023)", ["--snr-gamma", "5"]),
    "cosine": ("cosine schedule (improved DDPM Eq. 17)", ["--overrides", '{"schedule": "cosine"}']),
    "scaled-linear": ("scaled-linear schedule (LDM / SD)", ["--overrides", '{"schedule": "scaled-linear"}']),
    "zero-snr": (
        "zero terminal SNR (Lin et al. 2024 Alg. 1), on the linear schedule",
        ["--overrides", '{"schedule": {"zero_terminal_snr": true}}'],
    ),
    "lr-1e-3": ("learning rate 1e-3", ["--lr", "1e-3"]),
    "batch-64": ("batch 64 (half the steps in the same minutes)", ["--batch", "64"]),
    "no-ema": ("no EMA (the raw weights)", ["--ema-decay", "0"]),
    "width-32": ("U-Net width 32 (model_channels; faster steps)", ["--overrides", '{"unet": {"model_channels": 32}}']),
    "width-96": ("U-Net width 96 (slower steps)", ["--overrides", '{"unet": {"model_channels": 96}}']),
    "depth-2": (
        "two resnets per U-Net level (num_res_blocks 2; slower steps)",
        ["--overrides", '{"unet": {"num_res_blocks": 2}}'],
    ),
    "width-32-min-snr-5": (
        "width 32 with Min-SNR-gamma 5: two rows' leads combined (speed and quality)",
        ["--overrides", '{"unet": {"model_channels": 32}}', "--snr-gamma", "5"],
    ),
}


def ablation_stages(r: str, data: list[str]) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """One stage per ABLATION row: ldm-clip-kl from scratch on the kl-f4 and clip stages' parts, into
    <runs>/ablation/<row>; a row's own flags go after ABLATION_ARGS, so they win (argparse keeps the last)."""
    parts = ["--autoencoder", f"{r}/kl-f4/final", "--conditioner", f"{r}/clip/final"]
    return [
        (
            f"ablation {row}",
            [
                "diffusion",
                "--pipeline",
                "ldm-clip-kl",
                *parts,
                "--out",
                f"{r}/ablation/{row}",
                *data,
                *ABLATION_ARGS,
                *flags,
            ],
            ("kl-f4", "clip"),
        )
        for row, (_, flags) in ABLATION.items()
    ]


# With parts "embedded" the part stages copy the shipped autoencoders and CLIP text tower out of zoo/weights
# instead of training them (2 h per autoencoder on 2 CPU cores): what the diffusion stages build on.
EMBEDDED_PARTS = {
    "kl-f4": "ldm-clip-kl/autoencoder",
    "vq-f4": "ldm-bert-vq/autoencoder",
    "clip": "ldm-clip-kl/conditioner",
    "bert": "ldm-bert-vq/conditioner",
    "root": "ldm-clip-kl",
}

# Per-stage settings. "cpu": this project's 2-core machines, every diffusion stage time-boxed (measured times in
# the README), on the embedded parts; the pixel models are left out (about 24 h each here). "gpu": one small GPU
# shared by all stages at once (--jobs 8), each time-boxed; the learning rate decays with the time box.
PRESETS: dict[str, dict] = {
    "cpu": {
        "parts": "embedded",
        "pixel": False,
        "ldm": CPU_LDM,
    },
    "gpu": {
        "parts": "train",
        "pixel": True,
        # every colour-shape pair: an autoencoder reads no caption (README "Which pairs each part sees")
        "autoencoder": [
            *("--batch", "64", "--steps", "8000", "--lr", "5e-4", "--max-minutes", "1.6", "--threads", "2"),
            *("--split", "all"),
        ],
        "clip": ["--batch", "512", "--steps", "4000", "--lr", "5e-4", "--max-minutes", "1.6", "--threads", "2"],
        "ldm": [
            *("--batch", "256", "--steps", "20000", "--lr", "4e-4", "--max-minutes", "3.3", "--threads", "2"),
            *("--sample-every", "100000"),
        ],
        "ddpm": [
            *("--batch", "128", "--steps", "20000", "--lr", "3e-4", "--max-minutes", "5.4", "--threads", "2"),
            *("--sample-every", "100000"),
        ],
    },
}


def part_stages(r: str, preset: dict, data: list[str], weights: str) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """kl-f4, vq-f4 and clip: trained (parts "train"), or copied in float32 from the embedded weights."""
    if preset["parts"] == "embedded":
        return [
            (name, ["export", "--run", f"{weights}/{src}", "--to", f"{r}/{name}/final", "--dtype", "float32"], ())
            for name, src in EMBEDDED_PARTS.items()
        ]
    return [
        ("kl-f4", ["autoencoder", "--name", "kl-f4", "--out", f"{r}/kl-f4", *data, *preset["autoencoder"]], ()),
        ("vq-f4", ["autoencoder", "--name", "vq-f4", "--out", f"{r}/vq-f4", *data, *preset["autoencoder"]], ()),
        ("clip", ["clip", "--out", f"{r}/clip", *data, *preset["clip"]], ()),
    ]


def latent_stage(name: str, r: str, preset: str, data: list[str]) -> tuple[str, list[str], tuple[str, ...]]:
    """(name, argv, needs) of one latent model: from scratch on the trained parts, or warm-started."""
    ae, uses_clip = LATENT[name]
    parts = ["--autoencoder", f"{r}/{ae}/final"] + (["--conditioner", f"{r}/clip/final"] if uses_clip else [])
    needs = (ae, "clip") if uses_clip else (ae,)
    settings = PRESETS[preset]["ldm"]
    warm = CPU_WARM.get(name) if preset == "cpu" else None
    if preset == "cpu" and not warm:  # from scratch: its step budget
        settings = [*settings, "--steps", str(CPU_LDM_STEPS[name])]
    if warm:  # its own flags go last: a --lr of its own wins over CPU_WARM_ARGS' (argparse: the last)
        if warm[0] == "--init":  # the whole pipeline: its parts come with it
            parts, needs = [], ()
        budget = ["--steps", str(CPU_WARM_STEPS[name])] if name in CPU_WARM_STEPS else []
        settings = [*CPU_WARM_ARGS, *budget, *(arg.format(r=r) for arg in warm)]
        needs = tuple(dict.fromkeys((*needs, *(a.split("/")[1] for a in warm if a.startswith("{r}/")))))
    elif name in FROM_TEXT_MODEL:
        parts, needs = ["--init", f"{r}/ldm-clip-kl/final"], ("ldm-clip-kl",)
    settings = [*settings, "--split", "all"] if name in ALL_PAIRS else settings
    return name, ["diffusion", "--pipeline", name, *parts, "--out", f"{r}/{name}", *data, *settings], needs


def commands(
    runs: str = "runs", only: list[str] | None = None, preset: str = "cpu", weights: str = "zoo/weights"
) -> list[tuple[str, list[str], tuple[str, ...]]]:
    """(name, argv, names it needs first) for every stage of the plan, then every export, in dependency order."""
    r, p = runs.rstrip("/"), PRESETS[preset]
    data = ["--cache", f"{r}/data"]
    plan = part_stages(r, p, data, weights)
    pixel = PIXEL if p["pixel"] else ()
    plan += [(n, ["diffusion", "--pipeline", n, "--out", f"{r}/{n}", *data, *p["ddpm"]], ()) for n in pixel]
    for name in LATENT:
        plan += [latent_stage(name, r, preset, data), *continuation_stages(name, r, data, preset)]
    plan += [(n, ["diffusion", "--pipeline", n, "--out", f"{r}/{n}", *data, *LOSS_STUDY_ARGS], ()) for n in LOSS_STUDY]
    trained = [*LATENT, *pixel, *LOSS_STUDY]
    # the 60 MB budget: parts int8 (components/storage.py), frozen parts stored once (zoo/shared_parts.py)
    export = ["export", "--dtype", "int8", "--share"]
    for n in trained:
        box = [n, *boxes(n, preset)][-1]  # the last box holds the final weights
        plan.append((f"export {n}", [*export, "--run", f"{r}/{box}/final", "--to", f"{weights}/{n}"], (box,)))
    if p["parts"] == "train":
        clip_export = ["export", "--dtype", "int8", "--run", f"{r}/clip/final-clip", "--to", f"{weights}/clip-shapes"]
        plan.append(("export clip-shapes", clip_export, ("clip",)))
    asked = [o for o in only or [] if o == "ablation" or o.startswith("ablation ")]  # "ablation <row>": one row
    plan += ablation_stages(r, data) if asked else []  # only on request: 2.5 CPU-hours
    if only:
        only = [*only, *(LOSS_STUDY if "loss-study" in only else ())]
        only += [box for n in only for box in boxes(n, preset)]
        only += [f"ablation {row}" for row in ABLATION] if "ablation" in only else []
        only += ["kl-f4", "clip"] if asked else []
        plan = [entry for entry in plan if entry[0] in only or entry[0].removeprefix("export ") in only]
    return plan


def done(argv: list[str]) -> bool:
    """A training stage is done when its final folder and metrics exist; exports always run (they are cheap)."""
    if argv[0] == "export":
        return False
    out = Path(argv[argv.index("--out") + 1])
    return (out / "final").is_dir() and (out / "metrics.json").is_file()


def outside_needs(pending: dict[str, tuple[list[str], tuple[str, ...]]], everything: list) -> set[str]:
    """The stages that `--only` left out but the chosen ones need. A copy of embedded parts (an export: seconds)
    joins `pending`; a training stage must have finished before, or the plan stops here, naming it, instead
    of waiting for it for ever. Returns the finished ones, which count as done."""
    stages = {name: (argv, deps) for name, argv, deps in everything}
    outside, todo = set(), [d for _, deps in pending.values() for d in deps]
    while todo:
        need = todo.pop()
        if need in pending or need in outside or need not in stages:
            continue
        argv, deps = stages[need]
        if argv[0] == "export":  # cheap: run it too, with what it needs
            pending[need] = (argv, deps)
            todo += deps
        elif done(argv):
            outside.add(need)
        else:
            needed_by = sorted(n for n, (_, d) in pending.items() if need in d)
            raise SystemExit(
                f"stage {', '.join(needed_by)} needs stage {need} first, which --only leaves out and which has not"
                f" finished ({argv[argv.index('--out') + 1]}/final): add {need} to --only"
            )
    return outside


def run_plan(
    runs: str, only: list[str] | None, jobs: int, extra: list[str], preset: str = "cpu", weights: str = "zoo/weights"
) -> None:
    """Run the plan's stages as subprocesses, at most `jobs` at once, each after the stages it needs."""
    from zoo.train.data import cached_dataset

    samples = int(extra[extra.index("--samples") + 1]) if "--samples" in extra else 50_000

    pending = {name: (argv, deps) for name, argv, deps in commands(runs, only, preset, weights)}
    finished = outside_needs(pending, commands(runs, None, preset, weights))  # before any work: it may stop
    finished |= {name for name, (argv, _) in pending.items() if done(argv)}
    cached_dataset(Path(runs) / "data", samples, seed=0)  # made once here, not raced by parallel stages
    running: dict[str, subprocess.Popen] = {}
    paused: list[str] = []
    while pending.keys() - finished and (running or not paused):
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                if proc.returncode == PAUSED:  # its guard: a checkpoint, no final/; the next plan run resumes it
                    paused.append(name)
                elif proc.returncode != 0:
                    raise SystemExit(f"stage {name} failed (exit {proc.returncode}); see {runs}/{name}.log")
                else:
                    finished.add(name)
                del running[name]
        ready = [n for n, (a, d) in pending.items() if n not in finished | running.keys() and set(d) <= finished]
        for name in ready[: max(0, jobs - len(running))] if not paused else []:  # a pause starts nothing new
            argv = pending[name][0] + (extra if pending[name][0][0] != "export" else [])
            log = open(Path(runs) / f"{name.replace(' ', '-')}.log", "a")  # noqa: SIM115 (lives as long as the process)
            logger.info("starting %s", name)
            running[name] = subprocess.Popen([sys.executable, "-m", "zoo.train", *argv], stdout=log, stderr=log)
        time.sleep(1)
    if paused:
        raise SystemExit(
            f"stage {', '.join(paused)} paused by --pause-after-minutes before its --steps (a checkpoint in its run "
            f"folder, no final/): run the same plan command again to continue; see {runs}/<stage>.log"
        )
