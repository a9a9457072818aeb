"""How fast each defect of a weights folder is answered (issue 14: every one in < 1 s, with an error that names
the file and the field): `python -m zoo.bench_defects`. Each defect is applied to a copy of the embedded
ldm-clip-kl folder, then `zoo.build(weights=copy)` is timed until it raises (tests/test_fuzz_api.py checks the
messages; this only measures).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFECTS: dict[str, tuple[Callable[[Path], Any], str]] = {  # defect -> (apply it, words the error holds)
    "not JSON": (lambda d: (d / "recipe.json").write_text("{nope"), "recipe.json"),
    "not UTF-8": (lambda d: (d / "recipe.json").write_bytes(b"\xff\xfe{"), "UTF-8"),
    "a list": (lambda d: (d / "recipe.json").write_text("[1]"), "JSON object"),
    "misses a part": (lambda d: edit_recipe(d, lambda r: r.pop("unet")), "missing recipe fields ['unet']"),
    "unknown field": (lambda d: edit_recipe(d, lambda r: r.update(colour=1)), "unknown recipe fields ['colour']"),
    "part without name": (lambda d: edit_recipe(d, lambda r: r["unet"].pop("name")), "recipe part 'unet'"),
    "unregistered part": (lambda d: edit_recipe(d, lambda r: r["unet"].update(name="unet-x")), "unknown unet"),
    "image_size 10**6": (lambda d: edit_recipe(d, lambda r: r.update(image_size=10**6)), "image_size"),
    "in_channels 8 vs 4": (
        lambda d: edit_recipe(d, lambda r: r["unet"]["kwargs"].update(in_channels=8)),
        "unet.kwargs.in_channels = 8 but",
    ),
    "kwarg not in config": (lambda d: edit_recipe(d, lambda r: r["unet"]["kwargs"].update(zz=1)), "unet.kwargs.zz"),
    "config misses a key": (lambda d: edit_json(d / "unet/config.json", lambda c: c.pop("num_res_blocks")), "misses"),
    "config unknown key": (lambda d: edit_json(d / "unet/config.json", lambda c: c.update(zz=1)), "unknown fields"),
    "config 10**9 channels": (
        lambda d: edit_json(d / "unet/config.json", lambda c: c.update(model_channels=10**9)),
        "model_channels",
    ),
    "text config misses a key": (lambda d: edit_text(d, lambda c: c.pop("num_hidden_layers")), "misses fields"),
    "text config 10**6 layers": (lambda d: edit_text(d, lambda c: c.update(num_hidden_layers=10**6)), "layers"),
    "text config 10**9 vocab": (lambda d: edit_text(d, lambda c: c.update(vocab_size=10**9)), "vocab_size"),
    "text config 3 heads": (lambda d: edit_text(d, lambda c: c.update(num_attention_heads=3)), "heads (3)"),
    "text config activation": (lambda d: edit_text(d, lambda c: c.update(hidden_act="x")), "hidden_act 'x'"),
    "text config eos 10**6": (lambda d: edit_text(d, lambda c: c.update(eos_token_id=10**6)), "eos_token_id"),
    "text config model_type": (lambda d: edit_text(d, lambda c: c.update(model_type="bert")), "model_type"),
    "truncated weights": (lambda d: truncate(d / "unet/model.safetensors"), "model.safetensors"),
    "not safetensors": (
        lambda d: (d / "autoencoder/model.safetensors").write_bytes(b"PK\x03\x04" * 64),
        "safetensors",
    ),
    "missing part folder": (lambda d: shutil.rmtree(d / "autoencoder"), "autoencoder"),
}


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_recipe(folder, change):
    edit_json(folder / "recipe.json", change)


def edit_text(folder, change):
    edit_json(folder / "conditioner/config.json", change)


def truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def time_defects(name: str = "ldm-clip-kl") -> dict[str, tuple[float, str]]:
    """Per defect: seconds until zoo.build(weights=...) raised, and the first line of its message."""
    import zoo
    from zoo import pipeline_io, shared_parts

    zoo.build(weights=pipeline_io.embedded_weights(name), device="cpu")  # warm: imports and the first load
    results = {}
    for defect, (apply, _) in DEFECTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / name
            shared_parts.copy_pipeline(pipeline_io.embedded_weights(name), folder)
            apply(folder)
            results[defect] = timed_build(folder)
    return results


def timed_build(weights: str | Path) -> tuple[float, str]:
    """Seconds until zoo.build(weights=...) raised, and the first line of its message ("NOT REFUSED" if not)."""
    import zoo

    start = time.perf_counter()
    try:
        zoo.build(weights=weights, device="cpu")
        return time.perf_counter() - start, "NOT REFUSED"
    except Exception as err:  # noqa: BLE001 - measured and reported, whatever it is
        return time.perf_counter() - start, f"{type(err).__name__}: {err}".splitlines()[0]


def time_hub_misses(repo_id: str = "someone/not-here") -> dict[str, tuple[float, str]]:
    """A Hub repo id with no folder of that name here and nothing in the cache: seconds until zoo.build raised,
    with HF_HUB_OFFLINE as huggingface_hub read it (and forced on), and with this machine's network as it is
    (the Hub probed: huggingface_hub alone retries for ~25 s when it cannot connect)."""
    import huggingface_hub.constants

    from components import base

    results, offline = {}, huggingface_hub.constants.HF_HUB_OFFLINE
    for defect, forced in (("Hub id, HF_HUB_OFFLINE", True), ("Hub id, this network", offline)):
        huggingface_hub.constants.HF_HUB_OFFLINE, base._probed = forced, {}
        try:
            results[defect] = timed_build(repo_id)
        finally:
            huggingface_hub.constants.HF_HUB_OFFLINE = offline
    return results


def main() -> None:
    results = {**time_defects(), **time_hub_misses()}
    for defect, (seconds, message) in results.items():
        sys.stdout.write(f"{defect:24s} {seconds * 1000:8.1f} ms  {message[:110]}\n")
    sys.stdout.write(f"slowest: {max(s for s, _ in results.values()) * 1000:.1f} ms over {len(results)} defects\n")


if __name__ == "__main__":
    main()
