"""The training loop every stage shares: accelerate, EMA weights, resumable safetensors checkpoints, tqdm.

A stage gives a `step(batch_index) -> (loss, logs)` closure over its own data and models; the loop owns the
optimiser, the learning-rate warm-up and decay, EMA, logging, periodic sample grids and checkpoints.
Checkpoints are safetensors (models, EMA, optimiser tensors) + JSON (step, optimiser hyperparameters):
never a pickle. A run started again with the same output folder resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    steps: int
    lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 500
    seed: int = 0
    max_seconds: float | None = None  # a time box: stop early, and say so in the history


class EMA:
    """Exponential moving average of parameters: theta_ema <- d theta_ema + (1 - d) theta (with a warm-up on d)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for key, value in model.state_dict().items():
            if key in self.shadow:
                self.shadow[key].lerp_(value.detach().float(), 1 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        state = model.state_dict()
        model.load_state_dict({**state, **{k: v.to(state[k].dtype) for k, v in self.shadow.items()}})


def lr_factor(step: int, warmup: int, total: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak; under a time box, progress is the further of
    steps done and time used, so a run stopped by the clock has still decayed its learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state into flat tensors (safetensors) and plain JSON."""
    state = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": value.detach().cpu().contiguous()
        for index, slots in state["state"].items()
        for name, value in slots.items()
    }
    return tensors, {"param_groups": state["param_groups"]}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups["param_groups"]})


class Trainer:
    """Runs `step` for `config.steps` optimiser steps over `modules`' trainable parameters, resumably."""

    def __init__(self, out: Path, modules: dict[str, nn.Module], config: LoopConfig, *, mixed_precision: str = "auto"):
        from accelerate import Accelerator

        self.out, self.config = Path(out), config
        self.out.mkdir(parents=True, exist_ok=True)
        if mixed_precision == "auto":  # bf16 only where the hardware has it: ~55x slower emulated on this CPU
            mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        self.accelerator = Accelerator(mixed_precision=mixed_precision)
        self.device = self.accelerator.device
        self.modules = {name: module.to(self.device).train() for name, module in modules.items()}
        params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.ema = {name: EMA(m, config.ema_decay) for name, m in self.modules.items() if has_trainable(m)}
        self.step = 0
        self.history: list[dict] = []
        self.resume()

    # Checkpoints: <out>/checkpoint/{name.safetensors, name.ema.safetensors, optimizer.safetensors, state.json}
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def save_checkpoint(self) -> None:
        tmp = self.out / "checkpoint.tmp"
        tmp.mkdir(exist_ok=True)
        for name, module in self.modules.items():
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, tmp / f"{name}.safetensors"
            )
            if name in self.ema:
                save_file({k: v.cpu() for k, v in self.ema[name].shadow.items()}, tmp / f"{name}.ema.safetensors")
        tensors, groups = optimizer_tensors(self.optimizer)
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": self.step, "history": self.history, **groups}))
        if self.checkpoint_dir.exists():  # swap in only complete checkpoints
            for f in self.checkpoint_dir.iterdir():
                f.unlink()
            self.checkpoint_dir.rmdir()
        tmp.rename(self.checkpoint_dir)

    def resume(self) -> None:
        state_file = self.checkpoint_dir / "state.json"
        if not state_file.is_file():
            return
        state = json.loads(state_file.read_text())
        for name, module in self.modules.items():
            module.load_state_dict(load_file(self.checkpoint_dir / f"{name}.safetensors", device=str(self.device)))
            if name in self.ema:
                ema = load_file(self.checkpoint_dir / f"{name}.ema.safetensors", device=str(self.device))
                self.ema[name].shadow = {k: v.float() for k, v in ema.items()}
        load_optimizer(
            self.optimizer, load_file(self.checkpoint_dir / "optimizer.safetensors", device=str(self.device)), state
        )
        self.step, self.history = state["step"], state["history"]
        logger.info("resumed %s at step %d", self.out, self.step)

    def run(
        self, step_fn: Callable[[int], tuple[torch.Tensor, dict]], sample_fn: Callable[[Path], None] | None = None
    ):
        """Train until config.steps; returns the logged history (one dict per log interval)."""
        cfg, started, window = self.config, time.perf_counter(), []
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.out.name, mininterval=5, disable=None)
        while self.step < cfg.steps and not self.out_of_time(started):
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(self.step, cfg.warmup, cfg.steps, self.time_fraction(started))
            with self.accelerator.autocast():
                loss, logs = step_fn(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            if cfg.grad_clip:
                self.accelerator.clip_grad_norm_(self.trainable_parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            for name, ema in self.ema.items():
                ema.update(self.modules[name], self.step)
            window.append({"loss": float(loss.detach()), **logs})
            bar.update(1)
            self.after_step(window, started, sample_fn)
        bar.close()
        if self.step < cfg.steps:
            self.history.append({"step": self.step, "stopped": f"time box of {cfg.max_seconds:.0f} s reached"})
            logger.warning("%s: stopped at step %d of %d (time box)", self.out, self.step, cfg.steps)
            if sample_fn:
                with self.ema_weights():
                    sample_fn(self.out / f"samples-{self.step:06d}.png")
        self.save_checkpoint()
        return self.history

    def time_fraction(self, started: float) -> float:
        return 0.0 if self.config.max_seconds is None else (time.perf_counter() - started) / self.config.max_seconds

    def out_of_time(self, started: float) -> bool:
        return self.config.max_seconds is not None and time.perf_counter() - started > self.config.max_seconds

    def after_step(self, window: list[dict], started: float, sample_fn: Callable[[Path], None] | None) -> None:
        cfg = self.config
        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
            mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            record = {"step": self.step, "seconds": round(time.perf_counter() - started, 1), **mean}
            self.history.append(record)
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            logger.info("%s", record)
            window.clear()
        if sample_fn and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
            with self.ema_weights():
                sample_fn(self.out / f"samples-{self.step:06d}.png")
        if self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]

    def ema_weights(self) -> _SwapToEMA:
        """Context manager: the modules hold their EMA weights inside, their training weights after."""
        return _SwapToEMA(self)


def has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class _SwapToEMA:
    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.saved: dict[str, dict[str, torch.Tensor]] = {}

    def __enter__(self) -> None:
        for name, ema in self.trainer.ema.items():
            module = self.trainer.modules[name]
            self.saved[name] = {k: v.detach().clone() for k, v in module.state_dict().items()}
            ema.copy_to(module)
            module.eval()

    def __exit__(self, *exc: object) -> None:
        for name, state in self.saved.items():
            module = self.trainer.modules[name]
            module.load_state_dict(state)
            module.train()
