"""The training loop every stage shares: accelerate, EMA weights, resumable safetensors checkpoints, tqdm.

A stage gives a `step(batch_index) -> (loss, logs)` closure over its own data and models; the loop owns the
optimiser, the learning-rate warm-up and decay, EMA, logging, periodic sample grids and checkpoints.
Checkpoints are safetensors (models, EMA, optimiser tensors) + JSON (step, optimiser hyperparameters):
never a pickle. A run started again with the same output folder resumes from its last checkpoint.

Data parallel under `accelerate launch` / torchrun (any number of processes, GPUs or gloo CPU ranks): every
process holds the whole model and draws the same global batch of `config.batch` samples for a step; `shard`
cuts out this process's part (and, with `grad_accum` K, the part of each of the K micro-batches). After the
backward passes one all-reduce averages the gradients over the processes (DDP's arithmetic, done on the flat
gradient so the stages can call their models' own methods: `ae.loss`, a U-Net inside `diffusion_loss`, a BERT
inside the condition, which a DDP wrapper's forward would not see). Every process then takes the same
optimiser and EMA step, so the weights stay identical everywhere (checked at each checkpoint); only the main
process writes logs, samples, checkpoints and exports. The N-process run is the 1-process run with the same
global batch, up to float rounding; a checkpoint resumes on any number of processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)
Batch = TypeVar("Batch", torch.Tensor, Sequence)
PAUSED = 75  # the exit status of a run stopped by its guard (sysexits.h EX_TEMPFAIL: try again to continue)
UNSUPPORTED = ("FSDP", "DEEPSPEED", "MEGATRON_LM", "XLA")  # sharded or compiled engines: not this data-parallel loop


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
    # a guard, not a box: after this many seconds of one invocation, save a checkpoint and exit with PAUSED, final/
    # unwritten, so the same command continues the run; the lr schedule follows the steps alone
    pause_seconds: float | None = None
    batch: int | None = None  # the global batch per optimiser step (all processes, all micro-batches); None: unsharded
    grad_accum: int = 1  # micro-batches per optimiser step on each process (gradient accumulation)
    processes: int | None = None  # stop unless the launcher started exactly this many processes
    mixed_precision: str = "auto"  # "auto": bf16 where the hardware has it (a CUDA GPU), else "no"; or "no", "bf16"


@dataclass(frozen=True)
class Shard:
    """This process's part of a step's global batch: micro-batch `micro` of `accum`, on process `rank` of `world`.

    The global batch of B samples is cut into P = world * accum equal contiguous parts, micro-batch major:
    part p = micro * world + rank holds samples [p B / P, (p + 1) B / P). The mean over the P parts of the
    gradients of their mean losses is the gradient of the global batch's mean loss, so N processes x K
    micro-batches train the model one process trains on the whole batch. Works on tensors and lists.
    """

    rank: int = 0
    world: int = 1
    micro: int = 0
    accum: int = 1

    @property
    def parts(self) -> int:
        return self.world * self.accum

    @property
    def index(self) -> int:
        return self.micro * self.world + self.rank

    def __call__(self, batch: Batch) -> Batch:
        if len(batch) % self.parts:
            raise ValueError(f"a global batch of {len(batch)} does not split into {self.parts} equal parts")
        size = len(batch) // self.parts
        return batch[self.index * size : (self.index + 1) * size]


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
    """Runs `step` for `config.steps` optimiser steps over `modules`' trainable parameters, resumably, on every
    process of a distributed launch (see the module docstring); the stage's `step` cuts its batch with `shard`."""

    def __init__(
        self, out: Path, modules: dict[str, nn.Module], config: LoopConfig, *, tokenizers: dict[str, Any] | None = None
    ):
        """`tokenizers`: ones the run trains its own vocabulary for (a new BERT's, CLIP's). They are saved with the
        checkpoint and come back on resume (read `trainer.tokenizers`), the same on every process."""
        self.out, self.config = Path(out), config
        self.tokenizers = dict(tokenizers or {})
        self.accelerator = make_accelerator(config.mixed_precision)
        self.is_main = self.accelerator.is_main_process
        check_launch(config, self.accelerator.num_processes)
        self.device = self.accelerator.device
        self.shard = Shard(self.accelerator.process_index, self.accelerator.num_processes, 0, config.grad_accum)
        self.modules = {name: module.to(self.device).train() for name, module in modules.items()}
        self.broadcast_weights()
        params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.ema = {name: EMA(m, config.ema_decay) for name, m in self.modules.items() if has_trainable(m)}
        self.step, self.saved_step = 0, -1
        self.history: list[dict] = []
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self.resume()
        self.tokenizers = {name: tokenizer_of_main(tokenizer) for name, tokenizer in self.tokenizers.items()}
        if self.is_main:
            logger.info("%s: %s", self.out, self.describe())

    def describe(self) -> str:
        cfg, world, setup = self.config, self.accelerator.num_processes, self.accelerator.distributed_type.value
        setup += f", mixed precision {self.accelerator.mixed_precision}"
        if cfg.batch is None:
            return f"{world} process(es), unsharded batch ({setup})"
        split = f"{world} process(es) x {cfg.grad_accum} micro-batch(es) x {cfg.batch // self.shard.parts} samples"
        return (
            f"global batch {cfg.batch} = {split} ({setup}); learning rate {cfg.lr:g}, not scaled with the number of "
            "processes: the global batch is --batch whatever the launch"
        )

    # Checkpoints: <out>/checkpoint/{name.safetensors, name.ema.safetensors, optimizer.safetensors, state.json}
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def save_checkpoint(self) -> None:
        """Every process checks that its weights equal the main process's; the main one writes the checkpoint to
        checkpoint.tmp/ and renames it into place, so a run killed at any moment leaves a complete checkpoint."""
        self.check_identical()
        self.saved_step = self.step
        if not self.is_main:
            return
        tmp, old = self.out / "checkpoint.tmp", self.out / "checkpoint.old"
        shutil.rmtree(tmp, ignore_errors=True)  # a write interrupted by a crash
        tmp.mkdir()
        for name, module in self.modules.items():
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, tmp / f"{name}.safetensors"
            )
            if name in self.ema:
                save_file({k: v.cpu() for k, v in self.ema[name].shadow.items()}, tmp / f"{name}.ema.safetensors")
        for name, tokenizer in self.tokenizers.items():
            (tmp / f"{name}.tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str())
        tensors, groups = optimizer_tensors(self.optimizer)
        save_file(tensors, tmp / "optimizer.safetensors")
        state = {"step": self.step, "history": self.history, **self.layout(), **groups}
        (tmp / "state.json").write_text(json.dumps(state))  # written last: a folder with state.json is complete
        if self.checkpoint_dir.exists():  # swap in only complete checkpoints: checkpoint/ or checkpoint.old/ is whole
            shutil.rmtree(old, ignore_errors=True)
            self.checkpoint_dir.rename(old)
        tmp.rename(self.checkpoint_dir)
        shutil.rmtree(old, ignore_errors=True)

    def layout(self) -> dict[str, Any]:
        """How this run splits its batch (saved with the checkpoint; a resume may use another split)."""
        cfg = self.config
        world, precision = self.accelerator.num_processes, self.accelerator.mixed_precision
        return {
            "global_batch": cfg.batch,
            "processes": world,
            "grad_accum": cfg.grad_accum,
            "mixed_precision": precision,
        }

    def resume(self) -> None:
        folder = latest_checkpoint(self.out)
        if folder is None:
            return
        state_file = folder / "state.json"
        state = read_state(state_file)
        if state.get("global_batch") not in (None, self.config.batch) and self.config.batch is not None:
            raise SystemExit(
                f"{state_file} was written with a global batch of {state['global_batch']} (--batch), this run asks "
                f"for {self.config.batch}: pass --batch {state['global_batch']} to continue that run (any number of "
                "processes and --grad-accum that divide it), or a new --out"
            )
        for name, module in self.modules.items():
            load_into(module, folder / f"{name}.safetensors", self.device)
            if name in self.ema:
                ema = read_tensors(folder / f"{name}.ema.safetensors", self.device)
                self.ema[name].shadow = {k: v.float() for k, v in ema.items()}
        file = folder / "optimizer.safetensors"
        try:
            load_optimizer(self.optimizer, read_tensors(file, self.device), state)
        except (ValueError, KeyError) as error:
            raise SystemExit(f"cannot resume from {file}: it does not fit this run's parameters ({error})") from None
        self.step, self.history = state["step"], state["history"]
        for name, tokenizer in self.tokenizers.items():
            self.tokenizers[name] = load_tokenizer(folder / f"{name}.tokenizer.json", tokenizer)
        before = state.get("processes", 1), state.get("grad_accum", 1)
        logger.info("resumed %s at step %d (written by %d process(es) x %d micro-batches)", folder, self.step, *before)

    def run(
        self, step_fn: Callable[[int], tuple[torch.Tensor, dict]], sample_fn: Callable[[Path], None] | None = None
    ):
        """Train until config.steps; returns the logged history (one dict per log interval)."""
        cfg, started, window = self.config, time.perf_counter(), []
        quiet = None if self.is_main else True  # None: tqdm's own choice (off when not a terminal)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.out.name, mininterval=5, disable=quiet)
        paused = False
        while self.step < cfg.steps:
            seconds = self.elapsed(started)  # one read a step: under a distributed launch it is a broadcast
            if cfg.max_seconds is not None and seconds > cfg.max_seconds:  # the time box
                break
            if paused := cfg.pause_seconds is not None and seconds > cfg.pause_seconds:  # the guard
                break
            time_fraction = 0.0 if cfg.max_seconds is None else seconds / cfg.max_seconds
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(self.step, cfg.warmup, cfg.steps, time_fraction)
            window.append(self.train_step(step_fn))
            self.step += 1
            for name, ema in self.ema.items():
                ema.update(self.modules[name], self.step)
            bar.update(1)
            self.after_step(window, started, sample_fn)
        bar.close()
        if paused:
            self.pause()
        stopped = self.step < cfg.steps
        if stopped:
            self.history.append({"step": self.step, "stopped": f"time box of {cfg.max_seconds:.0f} s reached"})
            logger.warning("%s: stopped at step %d of %d (time box)", self.out, self.step, cfg.steps)
            self.sample(sample_fn)
        if stopped or self.saved_step != self.step:  # a time box that ends on a checkpoint step still records it
            self.save_checkpoint()
        return self.history

    def train_step(self, step_fn: Callable[[int], tuple[torch.Tensor, dict]]) -> dict[str, float]:
        """One optimiser step: the backward pass of each micro-batch, gradients averaged over processes, then
        clipping and AdamW. Returns this process's mean logs over its micro-batches."""
        cfg, logs = self.config, []
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            self.shard = Shard(self.shard.rank, self.shard.world, micro, cfg.grad_accum)
            with self.accelerator.autocast():
                loss, extra = step_fn(self.step)
            self.accelerator.backward(loss / cfg.grad_accum)
            logs.append({"loss": float(loss.detach()), **extra})
        average_gradients(list(self.trainable_parameters()), self.accelerator.num_processes)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), cfg.grad_clip)
        self.optimizer.step()
        return {k: sum(log[k] for log in logs) / len(logs) for k in logs[0]}

    def elapsed(self, started: float) -> float:
        """Seconds since `started` on the main process's clock, so every process takes the same time-box decisions."""
        seconds = torch.tensor([time.perf_counter() - started], dtype=torch.float64, device=self.device)
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast

            seconds = broadcast(seconds)
        return float(seconds)

    def pause(self) -> None:
        """The guard's stop: a checkpoint at this step, then exit PAUSED on every process, no final/ written
        (a stage whose final/ exists is finished: zoo.train.plan's done), so running the same command again
        resumes here and trains on to --steps, the learning rate where the step count puts it."""
        cfg = self.config
        self.history.append(
            {"step": self.step, "paused": f"after {cfg.pause_seconds:.0f} s, at {self.step} of {cfg.steps}"}
        )
        self.save_checkpoint()
        logger.warning(
            "%s: paused at step %d of %d (--pause-after-minutes); run the same command again to continue",
            self.out, self.step, cfg.steps,
        )  # fmt: skip
        raise SystemExit(PAUSED)

    def after_step(self, window: list[dict], started: float, sample_fn: Callable[[Path], None] | None) -> None:
        cfg = self.config
        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
            mean = self.mean_over_processes({k: sum(w[k] for w in window) / len(window) for k in window[0]})
            record = {"step": self.step, "seconds": round(time.perf_counter() - started, 2), **mean}
            record["processes"] = self.accelerator.num_processes
            self.history.append(record)
            if self.is_main:
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                logger.info("%s", record)
            window.clear()
        if self.step % cfg.sample_every == 0 or self.step == cfg.steps:
            self.sample(sample_fn)
        if self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def mean_over_processes(self, logs: dict[str, float]) -> dict[str, float]:
        """Each logged value averaged over the processes: the global batch's mean (the parts are equal in size)."""
        if self.accelerator.num_processes == 1:
            return logs
        values = torch.tensor([logs[k] for k in sorted(logs)], dtype=torch.float64, device=self.device)
        values = self.accelerator.reduce(values, reduction="mean")
        return dict(zip(sorted(logs), values.tolist(), strict=True))

    def sample(self, sample_fn: Callable[[Path], None] | None) -> None:
        if sample_fn and self.is_main:
            with self.ema_weights():
                sample_fn(self.out / f"samples-{self.step:06d}.png")

    def gather(self, part: torch.Tensor) -> torch.Tensor:
        """All processes' parts of a batch tensor, in the global batch's order, gradients flowing back to each part.

        torch.distributed.nn's all_gather sums the gradients of every process's copy of the result into the part's
        own process; as every process computes the same loss from the gathered batch, that sum is N times the
        gradient of one copy, and `average_gradients` divides by N again: the single-process gradient.
        """
        if self.shard.world == 1:
            return part
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(part.contiguous()))

    def check_identical(self) -> None:
        """Raise unless every process holds the main process's weights and EMA (a collective: all call it)."""
        if self.accelerator.num_processes == 1:
            return
        tensors = [t for m in self.modules.values() for t in m.state_dict().values() if t.is_floating_point()]
        tensors += [t for ema in self.ema.values() for t in ema.shadow.values()]
        prints = self.accelerator.gather(fingerprint(tensors).to(self.device)[None]).cpu()
        differ = [rank for rank in range(len(prints)) if not torch.equal(prints[rank], prints[0])]
        if differ:
            raise RuntimeError(f"step {self.step}: the weights of process(es) {differ} differ from the main process's")

    def broadcast_weights(self) -> None:
        """Start every process from the main process's initial weights (seeded alike, but make sure)."""
        if self.accelerator.num_processes == 1:
            return
        from accelerate.utils import broadcast

        with torch.no_grad():
            for module in self.modules.values():
                for tensor in module.state_dict().values():
                    tensor.copy_(broadcast(tensor.contiguous()))

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]

    def ema_weights(self) -> _SwapToEMA:
        """Context manager: the modules hold their EMA weights inside, their training weights after."""
        return _SwapToEMA(self)


def process_state() -> Any:
    """accelerate's process state (rank, world size, device), set up once per process: on the CPU, with gloo,
    where ACCELERATE_USE_CPU is set or several processes have no GPU, so a plain torchrun launch works on a CPU
    machine too (accelerate's own PartialState() reads that flag only through an Accelerator)."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu())


def load_tokenizer(file: Path, like: Any) -> Any:
    """The tokenizer saved with a checkpoint, as a `like` one; a checkpoint from before tokenizers were saved keeps
    `like` (built afresh), with a warning: its token ids may not be those the run was trained with."""
    if not file.is_file():
        logger.warning("%s is missing: the tokenizer was built again; its token ids may differ from the run's", file)
        return like
    return tokenizer_from_json(file.read_text(), like)


def tokenizer_from_json(text: str, like: Any) -> Any:
    """A transformers fast tokenizer from its backend's JSON, with `like`'s special tokens and length."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(text), model_max_length=like.model_max_length, **like.special_tokens_map
    )


def tokenizer_of_main(tokenizer: Any) -> Any:
    """The main process's tokenizer, on every process. The tokenizers library's BPE / WordPiece training breaks
    ties in a per-process random order, so processes that each train one from the same captions get different
    vocabularies (measured: three processes, three vocabularies); the main one's travels as its JSON."""
    state = process_state()
    if state.num_processes == 1:
        return tokenizer
    text = broadcast_text(tokenizer.backend_tokenizer.to_str() if state.is_main_process else "", state.device)
    return tokenizer if state.is_main_process else tokenizer_from_json(text, tokenizer)


def broadcast_text(text: str, device: torch.device) -> str:
    """The main process's `text` on every process (UTF-8 bytes in a tensor: no pickle)."""
    from accelerate.utils import broadcast

    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
    length = int(broadcast(torch.tensor([len(data)], device=device)))
    buffer = data if len(data) == length else torch.zeros(length, dtype=torch.uint8, device=device)
    return bytes(broadcast(buffer).cpu().tolist()).decode()


def use_cpu() -> bool:
    """ACCELERATE_USE_CPU, or a multi-process launch without CUDA (one process keeps accelerate's choice: MPS...)."""
    from accelerate.utils import parse_flag_from_env

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return parse_flag_from_env("ACCELERATE_USE_CPU") or (world > 1 and not torch.cuda.is_available())


def make_accelerator(mixed_precision: str) -> Any:
    """accelerate's Accelerator; "auto" is bf16 where the hardware has it (a CUDA GPU), else none (bf16 autocast
    is ~55x slower emulated on our CPUs). The launcher's fp16 is refused: this loop does no loss scaling."""
    from accelerate import Accelerator

    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if mixed_precision == "fp16" or (mixed_precision == "auto" and launcher == "fp16"):
        source = "--mixed-precision" if mixed_precision == "fp16" else "the launcher (ACCELERATE_MIXED_PRECISION)"
        raise SystemExit(f"mixed_precision fp16 from {source} needs loss scaling, which zoo.train lacks: use bf16")
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    process_state()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=use_cpu())
    kind = accelerator.distributed_type.value
    if kind in UNSUPPORTED:
        raise SystemExit(
            f"distributed_type {kind} (from the accelerate config) is not supported by zoo.train, which is data "
            "parallel (every process holds the whole model): use distributed_type MULTI_GPU (or MULTI_CPU)"
        )
    return accelerator


def check_launch(config: LoopConfig, world: int) -> None:
    """Stop, naming the value, when the launch does not fit the run: process count, batch split, accumulation."""
    if config.grad_accum < 1:
        raise SystemExit(f"--grad-accum must be at least 1, got {config.grad_accum}")
    if config.processes is not None and config.processes != world:
        raise SystemExit(
            f"--processes {config.processes} asked for {config.processes} processes but the launcher started {world}"
            " (WORLD_SIZE). On a CPU `accelerate launch --cpu --num_processes N` starts one process: use "
            "`ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu.yaml --num_processes N`"
        )
    parts = world * config.grad_accum
    if parts > 1 and (config.batch is None or config.batch % parts):
        raise SystemExit(
            f"--batch {config.batch} (the global batch) must be a multiple of processes x --grad-accum = "
            f"{world} x {config.grad_accum} = {parts}, so every process trains equal parts"
        )


def average_gradients(params: list[nn.Parameter], world: int) -> None:
    """grad <- mean over processes of grad (what DDP computes), in one all-reduce of the flattened gradients.

    A parameter no process used keeps grad None (AdamW then skips it, as in a single process); one used on some
    processes only gets the mean with zeros from the others, as the single-process gradient of the whole batch.
    """
    if world == 1 or not params:
        return
    import torch.distributed as dist

    used = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=params[0].device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params] + [used])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, anyone in zip(params, flat[-len(params) :].tolist(), strict=True):
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone() if anyone > 0 else None
        offset += p.numel()


def fingerprint(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(sum, sum of squares, position-weighted sum) of all values in float64: equal weights give equal prints."""
    if not tensors:
        return torch.zeros(3, dtype=torch.float64)
    flat = torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors])
    weights = torch.arange(1, len(flat) + 1, dtype=torch.float64) / len(flat)
    return torch.stack([flat.sum(), flat.pow(2).sum(), (flat * weights).sum()])


def latest_checkpoint(out: Path) -> Path | None:
    """checkpoint/, or checkpoint.old/ when a run died between the two renames of `save_checkpoint`."""
    for folder in (out / "checkpoint", out / "checkpoint.old"):
        if (folder / "state.json").is_file():
            return folder
    return None


DAMAGED = "damaged (truncated, or not what this run wrote): delete {folder} to start over, or pass a new --out"


def read_state(file: Path) -> dict[str, Any]:
    """A checkpoint's state.json; a damaged one stops the run naming the file (nothing is trained or written)."""
    try:
        state = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SystemExit(f"cannot resume: {file} is {DAMAGED.format(folder=file.parent)} ({error})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "history" not in state:
        raise SystemExit(f"cannot resume: {file} has no step and history: it is {DAMAGED.format(folder=file.parent)}")
    return state


def read_tensors(file: Path, device: torch.device) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise SystemExit(f"cannot resume: {file} is missing (a checkpoint of another model or stage?)")
    try:
        return load_file(file, device="cpu" if device.type == "cpu" else str(device))  # not "cpu:0" (gloo ranks)
    except (SafetensorError, OSError) as error:
        raise SystemExit(f"cannot resume: {file} is {DAMAGED.format(folder=file.parent)} ({error})") from None


def load_into(module: nn.Module, file: Path, device: torch.device) -> None:
    try:
        module.load_state_dict(read_tensors(file, device))
    except RuntimeError as error:
        raise SystemExit(f"cannot resume from {file}: it does not fit this run's model ({error})") from None


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
