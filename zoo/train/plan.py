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

logger = logging.getLogger(__name__)

SHIPPED = ("ldm-clip-kl", "ldm-bert-vq", "ldm-seg-kl", "ddpm-cosine", "ddpm-linear")


# Per-stage settings. "cpu": sized for this project's 2-core machines (see README for the measured time per
# step). "gpu": one small GPU shared by all stages at once (--jobs 5), each stage time-boxed so the whole plan
# ends within about six minutes; the learning rate decays with the time box (zoo/train/loop.py).
PRESETS: dict[str, dict[str, list[str]]] = {
    "cpu": {
        "autoencoder": ["--batch", "32", "--steps", "6000", "--lr", "5e-4"],
        "clip": ["--batch", "256", "--steps", "3000", "--lr", "5e-4"],
        "ldm": ["--batch", "64", "--steps", "8000", "--lr", "3e-4"],
        "ddpm": ["--batch", "64", "--steps", "8000", "--lr", "3e-4"],
    },
    "gpu": {
        "autoencoder": ["--batch", "64", "--steps", "8000", "--lr", "5e-4", "--max-minutes", "1.6", "--threads", "2"],
        "clip": ["--batch", "512", "--steps", "4000", "--lr", "5e-4", "--max-minutes", "1.6", "--threads", "2"],
        "ldm": [
            "--batch",
            "256",
            "--steps",
            "20000",
            "--lr",
            "4e-4",
            "--max-minutes",
            "3.3",
            "--threads",
            "2",
            "--sample-every",
            "100000",
        ],
        "ddpm": [
            "--batch",
            "128",
            "--steps",
            "20000",
            "--lr",
            "3e-4",
            "--max-minutes",
            "5.4",
            "--threads",
            "2",
            "--sample-every",
            "100000",
        ],
    },
}


def commands(
    runs: str = "runs", only: list[str] | None = None, preset: str = "cpu", weights: str = "zoo/weights"
) -> list[tuple[str, list[str], tuple[str, ...]]]:
    r, p = runs.rstrip("/"), PRESETS[preset]
    data = ["--cache", f"{r}/data"]
    plan = [
        ("kl-f4", ["autoencoder", "--name", "kl-f4", "--out", f"{r}/kl-f4", *data, *p["autoencoder"]], ()),
        ("vq-f4", ["autoencoder", "--name", "vq-f4", "--out", f"{r}/vq-f4", *data, *p["autoencoder"]], ()),
        ("clip", ["clip", "--out", f"{r}/clip", *data, *p["clip"]], ()),
        (
            "ddpm-cosine",
            ["diffusion", "--pipeline", "ddpm-cosine", "--out", f"{r}/ddpm-cosine", *data, *p["ddpm"]],
            (),
        ),
        (
            "ddpm-linear",
            ["diffusion", "--pipeline", "ddpm-linear", "--out", f"{r}/ddpm-linear", *data, *p["ddpm"]],
            (),
        ),
        (
            "ldm-clip-kl",
            [
                "diffusion",
                "--pipeline",
                "ldm-clip-kl",
                "--autoencoder",
                f"{r}/kl-f4/final",
                "--conditioner",
                f"{r}/clip/final",
                "--out",
                f"{r}/ldm-clip-kl",
                *data,
                *p["ldm"],
            ],
            ("kl-f4", "clip"),
        ),
        (
            "ldm-bert-vq",
            [
                "diffusion",
                "--pipeline",
                "ldm-bert-vq",
                "--autoencoder",
                f"{r}/vq-f4/final",
                "--out",
                f"{r}/ldm-bert-vq",
                *data,
                *p["ldm"],
            ],
            ("vq-f4",),
        ),
        (
            "ldm-seg-kl",
            [
                "diffusion",
                "--pipeline",
                "ldm-seg-kl",
                "--autoencoder",
                f"{r}/kl-f4/final",
                "--out",
                f"{r}/ldm-seg-kl",
                *data,
                *p["ldm"],
            ],
            ("kl-f4",),
        ),
    ]
    plan += [(f"export {n}", ["export", "--run", f"{r}/{n}/final", "--to", f"{weights}/{n}"], (n,)) for n in SHIPPED]
    plan.append(
        (
            "export clip-shapes",
            ["export", "--run", f"{r}/clip/final-clip", "--to", f"{weights}/clip-shapes"],
            ("clip",),
        )
    )
    if only:
        plan = [entry for entry in plan if entry[0] in only or entry[0].removeprefix("export ") in only]
    return plan


def done(argv: list[str]) -> bool:
    """A training stage is done when its final folder and metrics exist; exports always run (they are cheap)."""
    if argv[0] == "export":
        return False
    out = Path(argv[argv.index("--out") + 1])
    return (out / "final").is_dir() and (out / "metrics.json").is_file()


def run_plan(
    runs: str, only: list[str] | None, jobs: int, extra: list[str], preset: str = "cpu", weights: str = "zoo/weights"
) -> None:
    """Run the plan's stages as subprocesses, at most `jobs` at once, each after the stages it needs."""
    from zoo.train.data import cached_dataset

    samples = int(extra[extra.index("--samples") + 1]) if "--samples" in extra else 50_000

    cached_dataset(Path(runs) / "data", samples, seed=0)  # made once here, not raced by parallel stages
    pending = {name: (argv, deps) for name, argv, deps in commands(runs, only, preset, weights)}
    finished = {name for name, (argv, _) in pending.items() if done(argv)}
    running: dict[str, subprocess.Popen] = {}
    while pending.keys() - finished:
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                if proc.returncode != 0:
                    raise SystemExit(f"stage {name} failed (exit {proc.returncode}); see {runs}/{name}.log")
                finished.add(name)
                del running[name]
        ready = [n for n, (a, d) in pending.items() if n not in finished | running.keys() and set(d) <= finished]
        for name in ready[: max(0, jobs - len(running))]:
            argv = pending[name][0] + (extra if pending[name][0][0] != "export" else [])
            log = open(Path(runs) / f"{name.replace(' ', '-')}.log", "a")  # noqa: SIM115 (lives as long as the process)
            logger.info("starting %s", name)
            running[name] = subprocess.Popen([sys.executable, "-m", "zoo.train", *argv], stdout=log, stderr=log)
        time.sleep(1)
