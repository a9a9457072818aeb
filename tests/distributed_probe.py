"""`python -m zoo.train` with a recorder around it, for tests/test_distributed.py (launched once per process).

    accelerate launch ... tests/distributed_probe.py <probe dir> <zoo.train arguments> [--then <probe dir> ...]

Each `--then` starts another run in the same processes (one launch, so the imports are paid once).
Each process writes <probe dir>/rank<R>.json: the sample indices it trained at each step (its part of the
step's global batch, as `Trainer.shard` cut it from what `batch_indices` drew), and how often it wrote a
checkpoint tensor file, a sample grid, metrics or a pipeline export, and "finished" once the run returned. At
every checkpoint each process also dumps its own weights and EMA (rank<R>-step<S>.safetensors), and the main
process copies the checkpoint folder aside (checkpoint-<S>/). PROBE_DIE="<run>:<rank>:<step>" makes that
process of that run (0-based) exit abruptly before training that step.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

import zoo.train.loop as loop
import zoo.train.stages as stages
from zoo.pipelines.base import Pipeline
from zoo.train.__main__ import main

rank = int(os.environ.get("RANK", "0"))
die_run, die_rank, die_step = (int(v) for v in os.environ.get("PROBE_DIE", "-1:-1:-1").split(":"))
probe = Path()
record: dict = {}
drawn: list[torch.Tensor] = []
current = {"step": 0, "run": 0}


def dump() -> None:
    (probe / f"rank{rank}.json").write_text(json.dumps(record))


def counting(name: str, fn):
    def wrapper(*args, **kwargs):
        record["writes"][name] += 1
        dump()
        return fn(*args, **kwargs)

    return wrapper


original_indices, original_shard = stages.batch_indices, loop.Shard.__call__


def batch_indices(*args, **kwargs):
    drawn.append(original_indices(*args, **kwargs))
    return drawn[-1]


def shard(self, batch):
    part = original_shard(self, batch)
    if drawn and batch is drawn[-1]:  # this process's part of the sample indices
        record["indices"].setdefault(str(current["step"]), []).extend(part.tolist())
    return part


original_train_step, original_save = loop.Trainer.train_step, loop.Trainer.save_checkpoint


def train_step(self, step_fn):
    current["step"] = self.step
    if (current["run"], rank, self.step) == (die_run, die_rank, die_step):
        dump()
        os._exit(3)  # no clean-up, as a process killed by the OOM killer or a lost node
    result = original_train_step(self, step_fn)
    dump()
    return result


def save_checkpoint(self):
    original_save(self)
    tensors = {
        f"{n}.{k}": v.detach().cpu().contiguous() for n, m in self.modules.items() for k, v in m.state_dict().items()
    }
    tensors |= {f"{n}.ema.{k}": v.cpu() for n, ema in self.ema.items() for k, v in ema.shadow.items()}
    save_file(tensors, probe / f"rank{rank}-step{self.step}.safetensors")
    if self.is_main:
        shutil.copytree(self.checkpoint_dir, probe / f"checkpoint-{self.step}", dirs_exist_ok=True)


stages.batch_indices = batch_indices
loop.Shard.__call__ = shard
loop.Trainer.train_step = train_step
loop.Trainer.save_checkpoint = save_checkpoint
loop.save_file = counting("checkpoint_tensors", loop.save_file)
stages.write_metrics = counting("metrics", stages.write_metrics)
Pipeline.save_pretrained = counting("exports", Pipeline.save_pretrained)
Image.Image.save = counting("samples", Image.Image.save)
runs: list[list[str]] = [[]]
for arg in sys.argv[1:]:
    runs.append([]) if arg == "--then" else runs[-1].append(arg)
for index, (folder, *argv) in enumerate(runs):
    probe, current["run"] = Path(folder), index
    record = {"indices": {}, "writes": dict.fromkeys(("checkpoint_tensors", "samples", "metrics", "exports"), 0)}
    probe.mkdir(parents=True, exist_ok=True)
    main(argv)
    record["finished"] = True
    dump()
