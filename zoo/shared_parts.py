"""Parts that several embedded pipelines share, stored once.

Frozen parts are byte-identical across the embedded pipelines (the KL-f4 autoencoder in five of them, the CLIP
text tower in four). In zoo/weights such a part may be stored once: the other pipeline folders hold a small
`<role>.shared.json` instead of the `<role>/` folder, naming the sibling folder that has it and the SHA-256 of
each of its files' content, so a part that changed under it is an error, never a silently different model:

    {"same_as": "ldm-clip-kl/autoencoder", "sha256": {"config.json": "...", "model.safetensors": "..."}}

`same_as` is relative to the folder that holds the pipeline folders, and must stay inside it (no `..`, no
absolute path). Only the embedded weights use this: `save_pretrained` and `push_to_hub` always write every part
in full, and `zoo.train export` writes full folders unless asked to share (`--share`, what the plan does).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path, PurePosixPath

from safetensors import safe_open

from components.base import WeightsError, read_json_object

SUFFIX = ".shared.json"


def digest(file: Path) -> str:
    """SHA-256 of a file's content: its bytes, or for safetensors its metadata and tensors in name order (the
    writer orders the header's metadata differently from run to run, so equal tensors can differ in bytes)."""
    if file.suffix != ".safetensors":
        return hashlib.sha256(file.read_bytes()).hexdigest()
    h = hashlib.sha256()
    try:
        with safe_open(str(file), framework="np") as handle:
            h.update(json.dumps(sorted((handle.metadata() or {}).items())).encode())
            for name in sorted(handle.keys()):
                array = handle.get_tensor(name)
                h.update(f"{name}|{array.dtype}|{array.shape}".encode())
                h.update(array.tobytes())
    except Exception as err:  # safetensors raises several types for corrupt files
        raise WeightsError(f"{file} is not valid safetensors: {err}") from err
    return h.hexdigest()


def digests(folder: Path) -> dict[str, str]:
    """digest() of every file directly in `folder` (a part folder: config.json, model.safetensors, tokenizer)."""
    return {f.name: digest(f) for f in sorted(folder.iterdir()) if f.is_file()}


# Fields a config.json gets from the library that wrote it, not from the part: transformers stamps its version into
# the configs of the CLIP and BERT towers, so one tower saved under transformers 5.24 and 5.25 is still one part.
WRITER_FIELDS = ("transformers_version",)


def identity(folder: Path) -> dict[str, str]:
    """digests(folder), config.json read as a JSON object less WRITER_FIELDS: what makes two part folders one part."""
    found = digests(folder)
    config = folder / "config.json"
    data = json.loads(config.read_text(encoding="utf-8")) if "config.json" in found else None
    if isinstance(data, dict):
        kept = {k: v for k, v in data.items() if k not in WRITER_FIELDS}
        found["config.json"] = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
    return found


def part_folder(pipeline: Path, role: str, *, verify: bool = True) -> Path:
    """The folder of `role` in the pipeline folder `pipeline`: its own `<role>/`, or the sibling's that its
    `<role>.shared.json` names (checked: inside the same root, present, and unless `verify` is False, for an
    export about to replace the part, every file's digest as recorded)."""
    own, link = pipeline / role, pipeline / f"{role}{SUFFIX}"
    if own.is_dir() or not link.is_file():
        return own  # a missing part is reported by the caller, which names the folder it expected
    data = read_json_object(link)
    same_as, recorded = data.get("same_as"), data.get("sha256")
    if not isinstance(same_as, str) or not isinstance(recorded, dict) or set(data) != {"same_as", "sha256"}:
        raise WeightsError(f"{link} must hold {{'same_as': '<pipeline>/<role>', 'sha256': {{file: digest}}}}")
    relative = PurePosixPath(same_as)
    if relative.is_absolute() or ".." in relative.parts or len(relative.parts) != 2:
        raise WeightsError(f"{link}: same_as {same_as!r} must be '<pipeline>/<role>' inside {pipeline.parent}")
    target = pipeline.parent.joinpath(*relative.parts)
    if not target.is_dir():
        raise WeightsError(f"{link}: the shared part {target} does not exist")
    found = digests(target) if verify else recorded
    if found != recorded:
        changed = sorted(
            set(found) ^ set(recorded) | {k for k in found.keys() & recorded.keys() if found[k] != recorded[k]}
        )
        raise WeightsError(f"{link}: {target} is not the part recorded (files that differ: {changed})")
    return target


def materialise(copy: Path, source: Path) -> None:
    """In `copy` (a copy of the pipeline folder `source`), replace every `<role>.shared.json` by a full copy of
    the part it names (resolved where `source` is)."""
    for link in sorted(copy.glob(f"*{SUFFIX}")):
        role = link.name.removesuffix(SUFFIX)
        shutil.copytree(part_folder(source, role), copy / role)
        link.unlink()


def share(pipeline: Path, root: Path, *, exclude: str) -> list[str]:
    """In the pipeline folder `pipeline` (about to become root/exclude), replace each part identical, file for
    file (`identity`: a config's writer version aside), to a part folder of another pipeline in `root` by a
    `<role>.shared.json`; returns the roles shared."""
    referenced = {  # parts of this pipeline that others already share: they stay where the others look
        read_json_object(link).get("same_as")
        for other in sorted(root.iterdir())
        if other.is_dir() and other.name != exclude
        for link in sorted(other.glob(f"*{SUFFIX}"))
    }
    candidates = [
        part
        for other in sorted(root.iterdir())
        if other.is_dir() and other.name != exclude and not other.name.startswith(".")
        for part in sorted(other.iterdir())
        if part.is_dir()
    ]
    candidates.sort(key=lambda c: f"{c.parent.name}/{c.name}" not in referenced)  # one copy that all point to
    shared = []
    for part in sorted(p for p in pipeline.iterdir() if p.is_dir()):
        if f"{exclude}/{part.name}" in referenced:
            continue
        mine = identity(part)
        match = next((c for c in candidates if c.name == part.name and identity(c) == mine), None)
        if match is not None:  # the link records the files it will load: the match's
            same_as = f"{match.parent.name}/{match.name}"
            link = {"same_as": same_as, "sha256": digests(match)}
            (pipeline / f"{part.name}{SUFFIX}").write_text(json.dumps(link, indent=2))
            shutil.rmtree(part)
            shared.append(part.name)
    return shared


def copy_pipeline(source: Path, to: Path) -> Path:
    """A self-contained copy of the pipeline folder `source` at `to` (shared parts copied in full)."""
    shutil.copytree(source, to)
    materialise(to, source)
    return to
