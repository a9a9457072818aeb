"""Copy a trained pipeline folder into the package, its tensors stored small to keep the wheel in its budget.

float16: every floating tensor (loading casts back to the model's float32 parameters; the rounding error,
~1e-3 relative, is far below what changes an image). int8: the zoo's own parts (U-Net, autoencoder, ...: the
large weight matrices with a per-output-channel scale, components/storage.py; the README measures what it
changes) and float16 for the text encoders, which transformers loads itself. Reading always dequantises, so
an export from an int8 folder (the plan's embedded parts) gives true float values.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from components import storage
from zoo import shared_parts

logger = logging.getLogger(__name__)


def export(
    run: Path, to: Path, *, dtype: str = "float16", share: bool = False, parts: dict[str, Path] | None = None
) -> Path:
    """Copy `run` to `to` with its tensors cast to `dtype`. The copy is made whole beside `to` and swapped in
    by renames, so an interrupted export leaves the old folder (or none), never a half-written one. Parts that
    `run` shares are copied in full; `share`: a part identical to one of another pipeline beside `to` is stored
    once (zoo/shared_parts.py), as the plan does for zoo/weights. `parts`: role -> a part folder that replaces
    the pipeline's own (e.g. a fine-tuned decoder's autoencoder); its config must equal the one it replaces, so
    only weights change, never what the other parts were trained against."""
    if not ((run / "recipe.json").is_file() or (run / "config.json").is_file()):
        raise SystemExit(f"{run} is neither a pipeline folder (recipe.json) nor a model folder (config.json)")
    staging, old = to.with_name(f".{to.name}.export-tmp"), to.with_name(f".{to.name}.export-old")
    for leftover in (staging, old):  # from an export that was interrupted earlier
        if leftover.exists():
            shutil.rmtree(leftover)
    shutil.copytree(run, staging, ignore=shutil.ignore_patterns("README.md"))
    try:
        for role, folder in (parts or {}).items():
            replace_part(staging, run, role, Path(folder))
    except SystemExit:
        shutil.rmtree(staging)
        raise
    if parts and (staging / "evaluation.json").is_file():  # it measured the part it no longer has
        (staging / "evaluation.json").unlink()
        logger.warning(
            "%s: evaluation.json dropped, it measured the replaced %s; `python -m zoo.evaluate <name> --save`"
            " measures the new weights",
            to,
            ", ".join(sorted(parts)),
        )
    shared_parts.materialise(staging, run)
    zoo_parts = zoo_part_folders(staging) if dtype == "int8" else set()
    for file in staging.rglob("*.safetensors"):
        part_dtype = "int8" if file.parent in zoo_parts else "float16" if dtype == "int8" else dtype
        if storage.stored_as(file) == part_dtype:  # kept byte for byte: quantising W' = s q again can move a
            continue  # scale by an ulp, and a re-export that replaces one part must leave the others as they were
        storage.save(storage.read(file), file, dtype=part_dtype)
        before = to / file.relative_to(staging)  # the same tensors written again: keep the bytes already there
        if before.is_file() and storage.same_content(before, file):
            shutil.copyfile(before, file)
    if share and to.parent.is_dir():
        shared = shared_parts.share(staging, to.parent, exclude=to.name)
        logger.info("%s shares %s with other pipelines in %s", to.name, shared or "nothing", to.parent)
    if to.exists():
        to.rename(old)
    staging.rename(to)
    if old.exists():
        shutil.rmtree(old)
    size = sum(f.stat().st_size for f in to.rglob("*") if f.is_file())
    logger.info("exported %s -> %s (%.1f MB)", run, to, size / 1e6)
    return to


def replace_part(staging: Path, run: Path, role: str, folder: Path) -> None:
    """Put a copy of `folder` in place of the part `role` of `staging` (a copy of the pipeline folder `run`)."""
    from components.base import read_json_object

    if not (staging / "recipe.json").is_file():
        raise SystemExit(f"--part {role}={folder}: {run} is not a pipeline folder (recipe.json), it has no parts")
    mine = shared_parts.part_folder(run, role, verify=False)  # a shared part replaced first
    if not (mine / "config.json").is_file():
        raise SystemExit(f"--part {role}={folder}: {run} has no part {role!r}")
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--part {role}={folder}: no config.json there (a part folder)")
    old, new = (part_interface(staging, role, read_json_object(f / "config.json")) for f in (mine, folder))
    if old != new:
        differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise SystemExit(
            f"--part {role}={folder}: its config differs from {mine}'s in {differ}; only weights may change"
            " (and what a part keeps inside, such as a grown decoder's blocks)"
        )
    shutil.rmtree(staging / role, ignore_errors=True)
    (staging / f"{role}{shared_parts.SUFFIX}").unlink(missing_ok=True)
    shutil.copytree(folder, staging / role, ignore=shutil.ignore_patterns("README.md"))


def part_interface(pipeline: Path, role: str, config: dict) -> dict:
    """What of a part's config.json the other parts were trained against: every field but the config class's
    `internal_fields` (e.g. an autoencoder's decoder_extra_blocks: a deeper decoder of the same latents), with
    its `added_fields` filled in by their defaults (a config.json saved before such a field existed)."""
    import dataclasses

    from zoo import catalog
    from zoo.pipeline_io import component_class, read_recipe

    catalog.load()
    part = read_recipe(pipeline / "recipe.json").parts[role]
    config_class = getattr(component_class(role, part.name), "config_class", None)
    if config_class is None or not dataclasses.is_dataclass(config_class):  # a text tower: transformers' config
        return config
    defaults = {f.name: f.default for f in dataclasses.fields(config_class) if f.name in config_class.added_fields}
    return {k: v for k, v in {**defaults, **config}.items() if k not in config_class.internal_fields}


def is_clip_model(folder: Path) -> bool:
    """A transformers CLIPModel folder (config.json's model_type "clip"), such as zoo/weights/clip-shapes."""
    from components.base import read_json_object

    config = folder / "config.json"
    return config.is_file() and read_json_object(config).get("model_type") == "clip"


def zoo_part_folders(folder: Path) -> set[Path]:
    """The part folders of the pipeline folder `folder` whose classes read int8 storage: the zoo's own modules
    (components/base.py) and text conditioners (components/conditioners/base.py); for a model folder, itself when it
    is the CLIP model (zoo.evaluate.load_clip reads it int8)."""
    from components.base import HubModule
    from components.conditioners.base import TextConditioner
    from zoo import catalog
    from zoo.pipeline_io import component_class, read_recipe

    catalog.load()
    if not (folder / "recipe.json").is_file():  # a model folder: the CLIP model, which zoo.evaluate.load_clip reads
        return {folder} if is_clip_model(folder) else set()
    recipe = read_recipe(folder / "recipe.json")
    return {
        folder / role
        for role, part in recipe.parts.items()
        if role != "schedule" and issubclass(component_class(role, part.name), (HubModule, TextConditioner))
    }
