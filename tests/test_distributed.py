"""Training under a distributed launch: two CPU processes (gloo), started by the README's accelerate command.

One tiny latent stage (ldm-seg-kl on a random tiny KL autoencoder, 64 samples, global batch 8, 6 steps) runs
on 2 processes through tests/distributed_probe.py, which records what each process trained on and wrote, and
the same stage runs in this process with the same global batch. By construction (zoo/train/loop.py, `Shard`)
the two runs take the same optimiser steps up to float rounding; these tests check that they do, that only the
main process writes, and that checkpoints survive a process dying and resume on another number of processes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
import zoo.train.loop as loop
from zoo.train.__main__ import main
from zoo.train.stages import batch_indices

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH, SAMPLES = 6, 8, 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*runs: list[str], **env: str) -> subprocess.CompletedProcess:
    """ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu.yaml (2 processes), the
    probe running each of `runs` ([probe dir, *zoo.train arguments]) in turn."""
    command = ["accelerate", "launch", "--config_file", "configs/accelerate/cpu.yaml", "--num_processes", "2"]
    command += ["--main_process_port", str(free_port()), "tests/distributed_probe.py"]
    command += [arg for run in runs for arg in ("--then", *run)][1:]
    environ = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    from zoo import catalog
    from zoo.registry import AUTOENCODERS

    catalog.load()
    root = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    AUTOENCODERS.build("kl-f4", tiny=True).save_pretrained(root / "ae")
    return root


def stage(runs: Path, out: Path, *extra: str, steps: int = STEPS, batch: int = BATCH) -> list[str]:
    args = f"--tiny --steps {steps} --samples {SAMPLES} --batch {batch} --threads 1 --sample-every 100 --warmup 1"
    args += " --lr 3e-3 --checkpoint-every 2 --log-every 2"
    return [
        *("diffusion", "--pipeline", "ldm-seg-kl", "--autoencoder", str(runs / "ae"), "--out", str(out)),
        *("--cache", str(runs / "data"), "--overrides", '{"steps":2}', *args.split(), *extra),
    ]


@pytest.fixture(scope="module")
def one(runs) -> Path:
    main(stage(runs, runs / "one"))
    return runs / "one"


@pytest.fixture(scope="module")
def two(runs, one) -> Path:
    """A 2-process run; then, in the same launch, the 1-process run `one` resumed on 2 processes for 2 more steps
    (`grown`), a run stopped by a time box (`boxed`), and a run whose second process dies before step 3 (`died`)."""
    shutil.copytree(one / "checkpoint", runs / "grown" / "checkpoint")
    result = launch(
        [str(runs / "probe"), *stage(runs, runs / "two", "--processes", "2")],
        [str(runs / "probe-grown"), *stage(runs, runs / "grown", steps=STEPS + 2)],
        [str(runs / "probe-boxed"), *stage(runs, runs / "boxed", "--max-minutes", "0.001", steps=10_000)],
        [str(runs / "probe-died"), *stage(runs, runs / "died")],
        PROBE_DIE="3:1:3",
    )
    finished = [
        rank.get("finished") for probe in ("probe", "probe-grown", "probe-boxed") for rank in ranks(runs, probe)
    ]
    assert all(finished), result.stderr[-3000:]
    assert result.returncode != 0  # the second run's process 1 died; torchrun stopped the other one
    return runs / "two"


def ranks(runs: Path, probe: str = "probe") -> list[dict]:
    return [json.loads((runs / probe / f"rank{r}.json").read_text()) for r in (0, 1)]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {
        **load_file(folder / "unet.safetensors"),
        **{f"ema.{k}": v for k, v in load_file(folder / "unet.ema.safetensors").items()},
    }


def assert_same_run(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal up to float rounding: summing a gradient in another order changes its last bits, and Adam's division
    by sqrt(v) magnifies that for near-zero gradients (measured: at most 1.5e-5 here, while 6 steps at lr 3e-3
    move the weights by ~5e-3; `test_both_processes...` checks they moved by more than 1e-3)."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-4, msg=key)


def test_each_process_trains_its_own_half_of_every_global_batch(runs, two):
    first, second = ranks(runs)
    assert sorted(first["indices"], key=int) == [str(s) for s in range(STEPS)]
    for step in range(STEPS):
        drawn = batch_indices(step, BATCH, SAMPLES, 0).tolist()
        assert first["indices"][str(step)] == drawn[: BATCH // 2]
        assert second["indices"][str(step)] == drawn[BATCH // 2 :]
        assert first["indices"][str(step)] != second["indices"][str(step)]


def test_both_processes_hold_identical_weights_equal_to_one_process(runs, one, two):
    for step in (2, 4, STEPS):
        rank0, rank1 = (load_file(runs / "probe" / f"rank{r}-step{step}.safetensors") for r in (0, 1))
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # bit for bit, EMA included
    assert_same_run(weights(two / "checkpoint"), weights(one / "checkpoint"))
    final, early = load_file(two / "checkpoint" / "unet.safetensors"), weights(runs / "probe" / "checkpoint-2")
    moved = max(float((final[k] - early[k]).abs().max()) for k in final)
    assert moved > 1e-3  # training changed the weights between step 2 and 6: the equality is not of untrained nets


def test_only_the_main_process_writes_logs_checkpoints_and_exports(runs, two, one):
    first, second = ranks(runs)
    assert second["writes"] == {"checkpoint_tensors": 0, "samples": 0, "metrics": 0, "exports": 0}
    assert first["writes"]["exports"] == 1 and first["writes"]["metrics"] == 1 and first["writes"]["samples"] == 1
    assert first["writes"]["checkpoint_tensors"] == 3 * 3  # unet, its EMA, the optimiser, at steps 2, 4, 6
    lines = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6] and {line["processes"] for line in lines} == {2}
    reference = [json.loads(line)["loss"] for line in (one / "log.jsonl").read_text().splitlines()]
    assert [line["loss"] for line in lines] == pytest.approx(reference, rel=1e-5)  # the global batch's mean loss
    state = json.loads((two / "checkpoint" / "state.json").read_text())
    assert (state["step"], state["processes"], state["global_batch"]) == (STEPS, 2, BATCH)
    assert sorted(p.name for p in two.iterdir()) == [
        "checkpoint",
        "final",
        "log.jsonl",
        "metrics.json",
        "samples-000006.png",
    ]
    zoo.load_pipeline(two / "final", device="cpu")


def test_a_two_process_checkpoint_resumes_on_one_process_as_the_same_run(runs, two):
    out = runs / "resumed"
    shutil.copytree(runs / "probe" / "checkpoint-2", out / "checkpoint")
    main(stage(runs, out))
    assert_same_run(weights(out / "checkpoint"), weights(two / "checkpoint"))
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(line["step"], line["processes"]) for line in lines] == [(4, 1), (6, 1)]


def test_both_processes_stop_at_the_same_step_of_a_time_box(runs, two):
    """The main process's clock decides for all (else one would wait forever in the next all-reduce)."""
    trained = [sorted(map(int, rank["indices"])) for rank in ranks(runs, "probe-boxed")]
    assert trained[0] == trained[1] and 0 < len(trained[0]) < 10_000
    state = json.loads((runs / "boxed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == len(trained[0]) and "time box" in state["history"][-1]["stopped"]


def test_a_one_process_checkpoint_resumes_on_two_processes_as_the_same_run(runs, one, two):
    out = runs / "grown-alone"
    shutil.copytree(one / "checkpoint", out / "checkpoint")
    main(stage(runs, out, steps=STEPS + 2))
    assert_same_run(weights(runs / "grown" / "checkpoint"), weights(out / "checkpoint"))
    assert json.loads((runs / "grown" / "checkpoint" / "state.json").read_text())["processes"] == 2


def test_one_process_with_two_micro_batches_is_the_same_run(runs, one):
    out = runs / "accum"
    main(stage(runs, out, "--grad-accum", "2"))
    assert_same_run(weights(out / "checkpoint"), weights(one / "checkpoint"))


def test_a_process_that_dies_leaves_the_last_complete_checkpoint(runs, two):
    out = runs / "died"
    assert not any(rank.get("finished") for rank in ranks(runs, "probe-died"))
    assert sorted(ranks(runs, "probe-died")[1]["indices"], key=int) == ["0", "1", "2"]  # died before step 3
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2 and not (out / "final").exists()
    written = weights(out / "checkpoint")  # every file of it loads
    assert_same_run(written, weights(runs / "probe" / "checkpoint-2"))


# ------------------------------------------------------------------------------------- faults, in this process
def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(runs, monkeypatch):
    out = runs / "crash"
    calls = {"n": 0}
    original = loop.save_file

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the second checkpoint, half written
            raise OSError("disk full")
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        main(stage(runs, out))
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
    monkeypatch.setattr(loop, "save_file", original)
    main(stage(runs, out))  # resumes from step 2 (the half-written checkpoint.tmp is discarded)
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == STEPS
    assert not (out / "checkpoint.tmp").exists()


def test_a_run_killed_between_the_two_renames_resumes_from_checkpoint_old(runs, one):
    out = runs / "renamed"
    shutil.copytree(one / "checkpoint", out / "checkpoint.old")  # checkpoint/ moved aside, the new one not yet in
    main(stage(runs, out))
    assert not (out / "checkpoint.old").exists()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == STEPS


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--processes", "2"], r"--processes 2 asked for 2 processes but the launcher started 1"),
        (["--grad-accum", "3"], r"--batch 8 \(the global batch\) must be a multiple of .* 1 x 3 = 3"),
        (["--grad-accum", "0"], r"--grad-accum must be at least 1"),
    ],
)
def test_a_launch_that_does_not_fit_the_run_says_which_value(runs, extra, message):
    with pytest.raises(SystemExit, match=message):
        main(stage(runs, runs / "refused", *extra))
    assert not (runs / "refused" / "checkpoint").exists()


def test_resuming_with_another_global_batch_names_the_checkpoint(runs, one):
    out = runs / "rebatched"
    shutil.copytree(one / "checkpoint", out / "checkpoint")
    with pytest.raises(SystemExit, match=r"rebatched/checkpoint/state.json was written with a global batch of 8"):
        main(stage(runs, out, batch=16))
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == STEPS  # untouched


def test_a_resumed_run_keeps_the_vocabulary_its_checkpoint_was_trained_with(runs):
    """The tokenizers library trains a different vocabulary at each build, so the checkpoint carries the one a
    new BERT (here) or CLIP is trained with, and a resumed run, hence its export, uses that one."""
    out = runs / "bert-vocab"
    argv = [*stage(runs, out, steps=2), "--pipeline", "ldm-bert-kl"]  # the later --pipeline wins
    main(argv)
    saved = json.loads((out / "checkpoint" / "conditioner.tokenizer.json").read_text())["model"]["vocab"]
    main([*argv, "--steps", "4"])
    exported = json.loads(next((out / "final").rglob("tokenizer.json")).read_text())["model"]["vocab"]
    assert exported == saved and len(saved) > 50


def test_fp16_from_the_launcher_is_refused(runs, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(SystemExit, match=r"fp16 from the launcher \(ACCELERATE_MIXED_PRECISION\) needs loss scaling"):
        main(stage(runs, runs / "fp16"))


def test_a_checkpoint_of_the_previous_format_still_resumes(runs, one):
    """Checkpoints written before the distributed loop have no layout fields in state.json: they resume."""
    out = runs / "old-format"
    shutil.copytree(
        runs / "probe" / "checkpoint-2" if (runs / "probe").exists() else one / "checkpoint", out / "checkpoint"
    )
    state_file = out / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    for key in ("global_batch", "processes", "grad_accum", "mixed_precision"):
        state.pop(key)
    state_file.write_text(json.dumps(state))
    main(stage(runs, out, steps=STEPS + 2))
    assert json.loads(state_file.read_text())["step"] == STEPS + 2


# ------------------------------------------------------------------- the other stages on 2 processes (slow)
def other_stage(runs: Path, kind: list[str], out: Path, *extra: str) -> list[str]:
    args = f"--tiny --steps 4 --samples {SAMPLES} --batch {BATCH} --threads 1 --sample-every 100 --warmup 1"
    args += f" --lr 3e-3 --checkpoint-every 2 --log-every 2 --cache {runs / 'data'}"
    return [*kind, "--out", str(out), *args.split(), *extra]


@pytest.mark.slow
def test_clip_and_the_kl_autoencoder_train_the_same_run_on_two_processes(runs, one):
    """CLIP's contrastive loss spans the whole global batch (embeddings gathered with their gradients), so two
    processes continue a 1-process CLIP checkpoint as one process does (the checkpoint carries the tokenizer:
    tokenizers trained in two processes get different vocabularies). The KL autoencoder draws its posterior
    noise per batch part, so two processes equal one with two micro-batches. VQ is refused on two processes."""
    clip, kl, vq = ["clip"], ["autoencoder", "--name", "kl-f4"], ["autoencoder", "--name", "vq-f4"]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    single = [sys.executable, "tests/distributed_probe.py", str(runs / "probe-clip-1")]
    single += other_stage(runs, clip, runs / "clip-1")
    subprocess.run(single, cwd=ROOT, env=environ, check=True, capture_output=True, timeout=300)
    shutil.copytree(runs / "probe-clip-1" / "checkpoint-2", runs / "clip-2" / "checkpoint")
    result = launch(
        [str(runs / "probe-clip"), *other_stage(runs, clip, runs / "clip-2")],
        [str(runs / "probe-kl"), *other_stage(runs, kl, runs / "kl-2")],
        [str(runs / "probe-vq"), *other_stage(runs, vq, runs / "vq-2")],
    )
    assert "a VQ autoencoder trains on one process only (this launch started 2)" in result.stderr
    assert all(rank.get("finished") for probe in ("probe-clip", "probe-kl") for rank in ranks(runs, probe))
    main(other_stage(runs, kl, runs / "kl-1", "--grad-accum", "2"))
    for name, module in (("clip", "clip"), ("kl", "autoencoder")):
        two_processes, one_process = (runs / f"{name}-{n}" / "checkpoint" for n in (2, 1))
        for file in (f"{module}.safetensors", f"{module}.ema.safetensors"):
            a, b = load_file(two_processes / file), load_file(one_process / file)
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-4, msg=f"{name} {file} {key}")
