"""Benchmarks (not tests): our parts timed against a reference measured in the same run.

    python -m zoo.bench unet [--config default] [--repeats 20] [--warmup 3]
    python -m zoo.bench train [--processes 1 2] [--pipeline ldm-seg-kl] [--batch 32] [--steps 12]
    python -m zoo.bench generate [--pipeline ldm-clip-kl] [--versus ddpm-cosine] [--steps 50] [--threads 2]
        [--traced | --compiled]
    python -m zoo.bench profile [--pipeline ldm-clip-kl] [--guidance 1] [--threads 1]
    python -m zoo.bench soak [--requests 500] [--every 50] [--tiny] [--delete-cache 60,600]
    python -m zoo.bench hostile [--tiny] [--images 50] [--all-pipelines]

`unet`: one forward of our U-Net and of diffusers' UNet2DConditionModel built to the same architecture and
loaded with the same weights through components/unets/diffusers_compat.py (the report gives the largest output
difference, which shows they are the same network). Eval mode, no_grad, torch's default thread count, calls
interleaved (ours, theirs, ours, ...) so drifting machine load hits both alike; median of the repeats after
warm-up. Bench configs are a registry: `UNET_BENCHES`.

`train`: training throughput (samples per second) of one diffusion stage launched on N data-parallel processes
for each N given, through the README's launch command (ACCELERATE_USE_CPU=true accelerate launch --config_file
configs/accelerate/cpu.yaml on a CPU, configs/accelerate/gpus.yaml on GPUs), 1 torch thread per process, the
same global batch for every N. The rate is read from the run's own log.jsonl between the first and the last
logged step, so start-up (imports, data, latents) and the first `--log-every` steps are not timed. The model is
the recipe's full-size U-Net on a random (untrained) autoencoder: the cost per step is the trained one's.

`generate`: seconds per 64x64 image of a pipeline with its embedded weights at its recipe's defaults (or the
given sampler / steps / guidance), median of the repeats after one warm-up; the share of that time spent in the
U-Net and in the decoder; the U-Net's FLOPs per forward (torch.utils.flop_counter) and the GFLOP/s it reached.
With `--versus`, the same for a second pipeline at the same steps, its calls interleaved with the first's, and the
ratio of the two times per image (LDM's argument: the latent U-Net step is cheaper than the pixel one); `--weights
DIR` takes the first pipeline from a saved folder (a run not shipped). `--traced` samples both through the traced U-Net
(components/unets/traced.py, `enable_traced_unet`), `--compiled` through the U-Net compiled by TorchInductor
(components/unets/compiled.py, `enable_compiled_unet`; the warm-up call compiles it, minutes on 2 cores); the FLOPs
are counted on the eager one.

`profile`: where a U-Net forward's time goes: the CPU time (time.process_time, so other processes' load does
not count) of one forward with the arguments the pipeline's sampler passes it (batch 2 under classifier-free
guidance), and, with forward hooks on every layer, the CPU time of each layer kind (3x3 and 1x1 convolutions,
linears, group and layer norms); the rest is attention, activations, reshapes and Python.

`soak`: the app served from this checkout, N requests, its RSS and file-cache size printed as it goes
(`python -m zoo.app.soak`, run as its own process: the app is a floor above the benchmarks).

`hostile`: the app served from this checkout under issue 14's hostile cases (pixel bombs in every image input,
every pipeline, the Zoo tables, a 55 MB body, many images in a row), the server's peak RSS per case
(`python -m zoo.app.hostile`, its own process likewise).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from components.unets.diffusers_compat import config_to_diffusers, state_dict_from_diffusers
from components.unets.unet import LDM_16, TINY, UNet, UNetConfig
from zoo.catalog import HUB_MODELS, SD_UNET
from zoo.registry import Registry

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class UNetBench:
    """One U-Net benchmark: the network (UNetConfig fields) and the input it is timed on."""

    unet: dict[str, Any]
    batch: int
    size: int  # height = width of x_t
    context_len: int


@dataclasses.dataclass(frozen=True)
class UNetBenchResult:
    config: str
    parameters: int
    ours_s: float  # median seconds per forward
    diffusers_s: float
    max_abs_diff: float  # largest |ours - diffusers| over the output, same weights and inputs

    @property
    def ratio(self) -> float:
        return self.ours_s / self.diffusers_s


UNET_BENCHES = Registry("U-Net bench config")
UNET_BENCHES.add(
    "default",
    lambda: UNetBench(unet=LDM_16, batch=2, size=16, context_len=16),
    description='the "unet-ldm" default: 16x16x4 latents, batch 2, a context of 16 tokens of width 128',
)
UNET_BENCHES.add(
    "sd-v1-5",
    lambda: UNetBench(
        unet={**SD_UNET, "in_channels": 4, "out_channels": 4, **HUB_MODELS["sd-v1-5"]["unet"]},  # the recipe's
        batch=2,
        size=64,
        context_len=77,
    ),
    description="the Stable Diffusion v1.5 U-Net size (random weights): 64x64x4 latents, batch 2, 77 tokens of 768",
)
UNET_BENCHES.add(
    "tiny",
    lambda: UNetBench(
        unet={**LDM_16, **TINY, "context_dim": 16},
        batch=2,
        size=8,
        context_len=4,
    ),
    description="a tiny U-Net, for the smoke test",
)


def build_pair(bench: UNetBench) -> tuple[UNet, torch.nn.Module]:
    """Our U-Net and diffusers' UNet2DConditionModel of the same architecture, ours loaded with its weights."""
    from diffusers import UNet2DConditionModel  # the reference implementation: benchmark only

    config = UNetConfig(**bench.unet)
    theirs = UNet2DConditionModel(**config_to_diffusers(config)).eval()
    ours = UNet(config).eval()
    ours.load_state_dict(state_dict_from_diffusers(theirs.state_dict()), strict=True)
    return ours, theirs


def bench_inputs(bench: UNetBench, config: UNetConfig, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """x_t (B, C, H, W), t (B,), context (B, L, D), drawn from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    x_t = torch.randn(bench.batch, config.in_channels, bench.size, bench.size, generator=generator)
    t = torch.randint(0, 1000, (bench.batch,), generator=generator)
    context = torch.randn(bench.batch, bench.context_len, config.context_dim, generator=generator)
    return x_t, t, context


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_medians(fns: Sequence[Callable[[], Any]], repeats: int, warmup: int) -> list[float]:
    """Median seconds per call of each fn, calling them in turn `repeats` times after `warmup` untimed rounds."""
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + repeats):
        for fn, log in zip(fns, times, strict=True):
            elapsed = seconds(fn)
            if round_ >= warmup:
                log.append(elapsed)
    return [statistics.median(log) for log in times]


@torch.no_grad()
def run_unet(name: str = "default", *, repeats: int = 20, warmup: int = 3) -> UNetBenchResult:
    """Time one forward of ours and of diffusers' twin on the bench config `name`."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    bench = UNET_BENCHES.build(name)
    ours, theirs = build_pair(bench)
    x_t, t, context = bench_inputs(bench, ours.config)
    diff = (ours(x_t, t, context) - theirs(x_t, t, context).sample).abs().max().item()
    ours_s, theirs_s = interleaved_medians(
        [lambda: ours(x_t, t, context), lambda: theirs(x_t, t, context)], repeats, warmup
    )
    return UNetBenchResult(name, ours.num_parameters(), ours_s, theirs_s, diff)


def report(result: UNetBenchResult) -> str:
    return (
        f"U-Net bench {result.config!r} ({result.parameters / 1e6:.2f}M parameters, {torch.get_num_threads()} "
        f"threads): ours {result.ours_s * 1e3:.2f} ms, diffusers {result.diffusers_s * 1e3:.2f} ms, "
        f"ratio ours/diffusers {result.ratio:.3f}, max |ours - diffusers| {result.max_abs_diff:.2e}"
    )


@dataclasses.dataclass(frozen=True)
class TrainBenchResult:
    processes: int
    samples_per_s: float
    steps_timed: int
    seconds: float
    mixed_precision: str  # as the run's checkpoint records it


def train_launch(processes: int) -> tuple[list[str], dict[str, str]]:
    """The README's launch command and environment for `processes` data-parallel processes here."""
    config = "gpus.yaml" if torch.cuda.is_available() else "cpu.yaml"
    env = {"OMP_NUM_THREADS": "1"} | ({} if torch.cuda.is_available() else {"ACCELERATE_USE_CPU": "true"})
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{config}"]
    if processes == 1:  # one process: accelerate's multi-process launcher wants at least two
        command = [sys.executable]
    else:
        command += ["--num_processes", str(processes), "--main_process_port", str(29_500 + processes)]
    return [*command, "-m", "zoo.train"], env


def run_train(processes: int, args: argparse.Namespace, work: Path) -> TrainBenchResult:
    """Train `args.pipeline` on `processes` processes; samples/s between the first and the last logged step."""
    out = work / f"run-{processes}"
    command, env = train_launch(processes)
    command += ["diffusion", "--pipeline", args.pipeline, "--autoencoder", str(work / "ae"), "--out", str(out)]
    command += f"--batch {args.batch} --steps {args.steps} --log-every {args.log_every} --threads 1 --warmup 1".split()
    command += f"--samples {args.samples} --sample-every 1000000 --checkpoint-every 1000000".split()
    command += ["--cache", str(work / "data"), "--processes", str(processes)]
    command += ["--max-minutes", str(args.max_minutes)] if args.max_minutes else []
    root = Path(__file__).resolve().parents[1]  # the configs/ and the zoo/ this bench belongs to
    env |= {"PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=root, env={**os.environ, **env}, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    if len(logs) < 2:
        raise RuntimeError(f"need two logged steps to time, got {len(logs)}: raise --steps or lower --log-every")
    steps, seconds = logs[-1]["step"] - logs[0]["step"], logs[-1]["seconds"] - logs[0]["seconds"]
    precision = json.loads((out / "checkpoint" / "state.json").read_text())["mixed_precision"]
    return TrainBenchResult(processes, steps * args.batch / seconds, steps, seconds, precision)


def run_train_bench(args: argparse.Namespace) -> list[TrainBenchResult]:
    from zoo import catalog
    from zoo.build import recipe
    from zoo.registry import AUTOENCODERS

    catalog.load()
    with tempfile.TemporaryDirectory(prefix="zoo-bench-train-") as folder:
        work = Path(folder)
        torch.manual_seed(0)
        AUTOENCODERS.build(recipe(args.pipeline).autoencoder.name).save_pretrained(work / "ae")
        return [run_train(n, args, work) for n in args.processes]


def train_report(results: list[TrainBenchResult], args: argparse.Namespace) -> str:
    where = f"{torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"
    base = results[0].samples_per_s
    rates = "; ".join(
        f"{r.processes} process(es) {r.samples_per_s:.1f} samples/s (x{r.samples_per_s / base:.2f}, "
        f"{r.steps_timed} steps in {r.seconds:.1f} s, mixed precision {r.mixed_precision})"
        for r in results
    )
    return f"train bench {args.pipeline!r} (global batch {args.batch}, 1 thread per process, {where}): {rates}"


@dataclasses.dataclass(frozen=True)
class GenerateBenchResult:
    pipeline: str
    settings: dict[str, Any]
    seconds_per_image: float  # the time of one generate call of `images` images, divided by `images`
    unet_share: float  # of the time per image, in the U-Net's forwards
    decoder_share: float  # in the autoencoder's decode (0 for pixel pipelines)
    unet_gflop: float  # per forward, at the batch generate runs it on (2 with guidance, times `images`)
    unet_gflops_per_s: float
    images: int = 1  # per generate call: the U-Net then runs on a batch of that many (twice that under guidance)


class _Stopwatch:
    """Adds up the wall time of every call to `module.<method>` while installed."""

    def __init__(self, module: Any, method: str):
        self.module, self.method, self.seconds, self.calls = module, method, 0.0, 0

    def __enter__(self) -> _Stopwatch:
        if self.module is not None:
            original = getattr(self.module, self.method)

            def timed(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.seconds += time.perf_counter() - start
                    self.calls += 1

            setattr(self.module, self.method, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.module is not None:
            delattr(self.module, self.method)  # the instance attribute goes; the class method shows through


def generate_kwargs(pipe: Any) -> dict[str, Any]:
    from zoo.evaluate import condition_kind, example_low_res

    kind = condition_kind(pipe)
    if kind == "low_res":  # super-resolution: the low-res image, no prompt
        return {"image": example_low_res(pipe)}
    prompt = {"text": "a red circle in the top left on a blue background", "class": 0}.get(kind)
    if kind == "seg":
        from zoo.data.shapes import Attributes, render

        return {"semantic_map": torch.from_numpy(render(Attributes("circle", "red", "blue", "large", "center"))[1])}
    return {} if prompt is None else {"prompt": prompt}


def unet_flops(pipe: Any, kwargs: dict[str, Any], settings: dict[str, Any], images: int = 1) -> tuple[float, int]:
    """FLOPs of the U-Net forwards of one 1-step generation of `images` images, divided by the number of forwards."""
    from torch.utils.flop_counter import FlopCounterMode

    with _Stopwatch(pipe.unet, "forward") as watch, FlopCounterMode(display=False) as counter:
        image = pipe.generate(**kwargs, **{**settings, "steps": 1}, seed=0, num_images=images)[0]
    total = counter.get_total_flops()
    ae = getattr(pipe, "autoencoder", None)
    if ae is not None:  # the decoder's share of the count, measured alone
        z = pipe.encode(image)
        with FlopCounterMode(display=False) as decoder:
            pipe.decode(z)
        total -= decoder.get_total_flops() * images
    return total / max(1, watch.calls), watch.calls


class _GenerateTimer:
    """One pipeline of the generate bench: built, its FLOPs counted, warmed up; `once` times one generate call."""

    def __init__(self, name: str, *, sampler, steps, guidance, fast, images: int, weights: str | None = None):
        import zoo

        pipe = zoo.build(name, weights=weights, device="cpu")  # a saved folder, when given, wins over the name
        self.name = name if weights is None else f"{pipe.recipe.name} ({weights})"
        settings: dict[str, Any] = {"sampler": sampler or pipe.recipe.sampler, "steps": steps or pipe.recipe.steps}
        if pipe.recipe.kind == "latent":
            settings["guidance_scale"] = pipe.recipe.guidance_scale if guidance is None else guidance
        self.kwargs = generate_kwargs(pipe)
        self.flop, _ = unet_flops(pipe, self.kwargs, settings, images)  # counted on the eager U-Net
        self.run = {**settings, "num_images": images}
        if fast is not None:  # "traced" or "compiled": the U-Net's twin (enable_traced_unet / enable_compiled_unet)
            getattr(pipe, f"enable_{fast}_unet")()
            settings["unet"] = fast
        self.pipe, self.settings, self.images, self.runs = pipe, settings, images, []
        pipe.generate(**self.kwargs, **self.run, seed=0)  # warm-up (and the trace or the compile)

    def once(self, seed: int) -> None:
        ae = getattr(self.pipe, "autoencoder", None)
        with _Stopwatch(self.pipe.network, "forward") as unet, _Stopwatch(ae, "decode") as decoder:
            start = time.perf_counter()
            self.pipe.generate(**self.kwargs, **self.run, seed=seed)
            self.runs.append((time.perf_counter() - start, unet.seconds, unet.calls, decoder.seconds))

    def result(self) -> GenerateBenchResult:
        total, unet_s, calls, decode_s = (statistics.median(r[i] for r in self.runs) for i in range(4))
        return GenerateBenchResult(
            pipeline=self.name,
            settings=self.settings,
            seconds_per_image=total / self.images,
            unet_share=unet_s / total,
            decoder_share=decode_s / total,
            unet_gflop=self.flop / 1e9,
            unet_gflops_per_s=self.flop * calls / unet_s / 1e9,
            images=self.images,
        )


def run_generate(
    name: str,
    *,
    repeats: int,
    sampler: str | None,
    steps: int | None,
    guidance: float | None,
    fast: str | None = None,
    images: int = 1,
    weights: str | None = None,
    versus: str | None = None,
) -> list[GenerateBenchResult]:
    """Median over `repeats` (after a warm-up) of one generate call of `images` images, per image; `weights`: a
    saved pipeline's folder instead of `name`'s embedded weights (a run not shipped, e.g. a candidate U-Net).
    With `versus`, that pipeline too, at the same steps, its calls interleaved with the first's (so a change in
    the machine's load falls on both alike: the ratio is what the bench is for)."""
    options = {"sampler": sampler, "fast": fast, "images": images}
    timers = [_GenerateTimer(name, steps=steps, guidance=guidance, weights=weights, **options)]
    if versus:  # the same steps, its own recipe's guidance, and eager, traced or compiled alike
        timers.append(_GenerateTimer(versus, steps=timers[0].settings["steps"], guidance=None, **options))
    for repeat in range(repeats):
        for timer in timers:
            timer.once(seed=repeat)
    return [timer.result() for timer in timers]


def generate_report(results: list[GenerateBenchResult]) -> str:
    lines = [
        f"{r.pipeline} ({', '.join(f'{k} {v}' for k, v in r.settings.items())}"
        + (f", {r.images} images per call" if r.images > 1 else "")
        + f"): {r.seconds_per_image:.3f} s/image, "
        f"U-Net {r.unet_share:.0%}, decoder {r.decoder_share:.0%}, U-Net {r.unet_gflop:.2f} GFLOP per forward at "
        f"{r.unet_gflops_per_s:.0f} GFLOP/s ({torch.get_num_threads()} threads)"
        for r in results
    ]
    if len(results) == 2:
        ratio = results[1].seconds_per_image / results[0].seconds_per_image
        lines.append(f"{results[0].pipeline} is {ratio:.1f}x faster per image than {results[1].pipeline}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    pipeline: str
    batch: int  # of the U-Net call (2 with classifier-free guidance)
    forward_s: float  # median CPU seconds per U-Net forward, timing hooks off
    kinds: dict[str, tuple[float, int]]  # layer kind -> (CPU seconds per forward, calls per forward), hooks on
    hooked_s: float  # median CPU seconds per forward with the hooks on (what the kinds add up against)
    layers: dict[str, int]  # layer kind -> how many layers of that kind the U-Net has


def layer_kind(module: torch.nn.Module) -> str | None:
    """The kind a profiled layer is counted under: conv KxK, linear, group norm, layer norm (None: not timed)."""
    if isinstance(module, torch.nn.Conv2d):
        return f"conv {module.kernel_size[0]}x{module.kernel_size[1]}"
    names = {torch.nn.Linear: "linear", torch.nn.GroupNorm: "group norm", torch.nn.LayerNorm: "layer norm"}
    return names.get(type(module))


def unet_call(pipe: Any, kwargs: dict[str, Any], settings: dict[str, Any]) -> tuple[tuple, dict]:
    """The arguments of the U-Net's first call in a 1-step generation (its batch, condition and mask as sampled)."""
    calls: list[tuple[tuple, dict]] = []
    original = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: calls.append((a, k)) or original(*a, **k)
    try:
        pipe.generate(**kwargs, **{**settings, "steps": 1}, seed=0)
    finally:
        del pipe.unet.forward  # the instance attribute goes; the class method shows through
    return calls[0]


def cpu_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median CPU time of the process per call (time.process_time: robust to other processes' load)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


@torch.inference_mode()
def run_profile(name: str, *, repeats: int, guidance: float | None) -> ProfileResult:
    """CPU time per U-Net forward of `name`'s sampling call, and the share of each layer kind (forward hooks)."""
    import zoo

    pipe = zoo.build(name, device="cpu")
    settings: dict[str, Any] = {"sampler": pipe.recipe.sampler}
    if pipe.recipe.kind == "latent":
        settings["guidance_scale"] = pipe.recipe.guidance_scale if guidance is None else guidance
    args, kwargs = unet_call(pipe, generate_kwargs(pipe), settings)
    forward = lambda: pipe.unet(*args, **kwargs)  # noqa: E731
    cpu_seconds(forward, 3)  # warm-up
    plain = cpu_seconds(forward, repeats)
    totals: dict[str, list[float]] = {}
    starts: dict[torch.nn.Module, float] = {}

    def start(module: torch.nn.Module, _inputs: Any) -> None:
        starts[module] = time.process_time()

    def stop(module: torch.nn.Module, _inputs: Any, _output: Any) -> None:
        totals.setdefault(layer_kind(module), []).append(time.process_time() - starts[module])

    handles = []
    for module in pipe.unet.modules():
        if layer_kind(module) is not None:
            handles += [module.register_forward_pre_hook(start), module.register_forward_hook(stop)]
    try:
        hooked = cpu_seconds(forward, repeats)
    finally:
        for handle in handles:
            handle.remove()
    kinds = {k: (sum(v) / repeats, len(v) // repeats) for k, v in sorted(totals.items(), key=lambda kv: -sum(kv[1]))}
    layers = collections.Counter(kind for m in pipe.unet.modules() if (kind := layer_kind(m)) is not None)
    return ProfileResult(name, len(args[0]), plain, kinds, hooked, dict(layers))


def profile_report(result: ProfileResult) -> str:
    parts = [f"{kind} {s * 1e3:.2f} ms ({calls} calls)" for kind, (s, calls) in result.kinds.items()]
    rest = result.hooked_s - sum(s for s, _ in result.kinds.values())
    return (
        f"{result.pipeline} U-Net forward, batch {result.batch}, {torch.get_num_threads()} thread(s): "
        f"{result.forward_s * 1e3:.2f} ms CPU; with timing hooks {result.hooked_s * 1e3:.2f} ms = "
        f"{'; '.join(parts)}; everything else (attention, activations, reshapes, Python) {rest * 1e3:.2f} ms"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zoo.bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    unet = commands.add_parser("unet", help="our U-Net against diffusers' UNet2DConditionModel")
    unet.add_argument("--config", default="default", choices=UNET_BENCHES.names(), help="bench config")
    unet.add_argument("--repeats", type=int, default=20, help="timed forwards of each (median reported)")
    unet.add_argument("--warmup", type=int, default=3, help="untimed forwards of each first")
    train = commands.add_parser("train", help="training samples/s on 1, 2, ... data-parallel processes")
    train.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to time, in turn")
    train.add_argument("--pipeline", default="ldm-seg-kl", help="a latent pipeline (its recipe's full-size U-Net)")
    train.add_argument("--batch", type=int, default=32, help="the global batch, the same for every process count")
    train.add_argument("--steps", type=int, default=12)
    train.add_argument("--log-every", type=int, default=4, help="the first logged step starts the clock")
    train.add_argument("--samples", type=int, default=512, help="training set size")
    train.add_argument("--max-minutes", type=float, default=0, help="time box per run (as zoo.train's)")
    gen = commands.add_parser("generate", help="seconds per image, U-Net / decoder share, GFLOP/s")
    gen.add_argument("--pipeline", default="ldm-clip-kl")
    gen.add_argument("--weights", default=None, help="the first pipeline from this saved folder (not --pipeline's)")
    gen.add_argument("--versus", default=None, help="a second pipeline at the same steps, e.g. ddpm-cosine")
    gen.add_argument("--sampler", default=None, help="default: each recipe's")
    gen.add_argument("--steps", type=int, default=None, help="default: the first pipeline's recipe's")
    gen.add_argument("--guidance", type=float, default=None, help="default: the recipe's")
    gen.add_argument("--repeats", type=int, default=5)
    gen.add_argument("--threads", type=int, default=2, help="torch threads (the README's figures: 2)")
    fast = gen.add_mutually_exclusive_group()
    fast.add_argument("--traced", action="store_true", help="sample through the traced U-Net (enable_traced_unet)")
    fast.add_argument(
        "--compiled", action="store_true", help="sample through the compiled U-Net (enable_compiled_unet)"
    )
    gen.add_argument("--images", type=int, default=1, help="images per call (the U-Net's batch); s / image")
    prof = commands.add_parser("profile", help="CPU time per U-Net forward and per layer kind (convs, linears, norms)")
    prof.add_argument("--pipeline", default="ldm-clip-kl")
    prof.add_argument("--guidance", type=float, default=None, help="default: the recipe's (1: batch 1, no CFG)")
    prof.add_argument("--repeats", type=int, default=30)
    prof.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is then the call's own)")
    soak = commands.add_parser("soak", help="the app under N requests: RSS and file-cache size as it goes")
    soak.add_argument("--requests", type=int, default=500, help="requests in all")
    soak.add_argument("--every", type=int, default=50, help="measure after every this many requests")
    soak.add_argument("--tiny", action="store_true", help="tiny random pipelines instead of the embedded weights")
    soak.add_argument("--delete-cache", help="FREQUENCY,AGE seconds of gradio's cache sweep (default 60,600)")
    hostile = commands.add_parser("hostile", help="the app under issue 14's hostile cases: peak RSS per case")
    hostile.add_argument("--tiny", action="store_true", help="tiny random pipelines instead of the embedded weights")
    hostile.add_argument("--images", type=int, default=50, help="requests of four images each, in each of two cases")
    hostile.add_argument("--all-pipelines", action="store_true", help="the server offers every pipeline")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> UNetBenchResult | list[TrainBenchResult] | int:
    """Run the benchmark named on the command line; log the report line to stdout and return the result."""
    args = parse_args(argv)
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stdout))
        logger.setLevel(logging.INFO)
    if args.command == "soak":  # the app is a floor above the benchmarks: run it as its own process
        command = [sys.executable, "-m", "zoo.app.soak", "--requests", str(args.requests), "--every", str(args.every)]
        command += ["--tiny"] * args.tiny + (["--delete-cache", args.delete_cache] if args.delete_cache else [])
        return subprocess.run(command, check=True).returncode
    if args.command == "hostile":
        command = [sys.executable, "-m", "zoo.app.hostile", "--images", str(args.images)]
        command += ["--tiny"] * args.tiny + ["--all-pipelines"] * args.all_pipelines
        return subprocess.run(command, check=True).returncode
    if args.command == "generate":
        torch.set_num_threads(args.threads)
        if args.images < 1:
            raise SystemExit(f"--images must be at least 1, got {args.images}")
        fast = "traced" if args.traced else "compiled" if args.compiled else None
        results = run_generate(
            args.pipeline,
            repeats=args.repeats,
            sampler=args.sampler,
            steps=args.steps,
            guidance=args.guidance,
            fast=fast,
            images=args.images,
            weights=args.weights,
            versus=args.versus,
        )
        logger.info(generate_report(results))
        return results
    if args.command == "profile":
        torch.set_num_threads(args.threads)
        result = run_profile(args.pipeline, repeats=args.repeats, guidance=args.guidance)
        logger.info(profile_report(result))
        return result
    if args.command == "train":
        results = run_train_bench(args)
        logger.info(train_report(results, args))
        return results
    result = run_unet(args.config, repeats=args.repeats, warmup=args.warmup)
    logger.info(report(result))
    return result


if __name__ == "__main__":
    main()
