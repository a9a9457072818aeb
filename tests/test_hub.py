"""The Hub code paths, offline: push_to_hub uploads exactly what save_pretrained writes, and a Hub repo id is
resolved through huggingface_hub's snapshot_download asking for JSON / safetensors / text files only."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import zoo
from components import base


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def test_push_to_hub_uploads_the_saved_pipeline_folder(monkeypatch, tmp_path):
    from huggingface_hub import HfApi

    calls: dict[str, object] = {}
    uploaded = tmp_path / "uploaded"

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["upload_folder"] = repo_id
        shutil.copytree(folder_path, uploaded)  # the temporary folder is gone after the call
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    pipe = zoo.build("ldm-clip-kl", tiny=True, device="cpu")
    url = pipe.push_to_hub("someone/shapes", private=True)
    assert calls["create_repo"] == ("someone/shapes", {"private": True, "exist_ok": True})
    assert calls["upload_folder"] == "someone/shapes" and url.endswith("/commit/0")
    assert (uploaded / "recipe.json").is_file() and (uploaded / "unet" / "model.safetensors").is_file()
    again = zoo.build(weights=uploaded, device="cpu")
    prompt = "a red circle on a blue background"
    assert (pixels(again.generate(prompt, steps=3, seed=1)) == pixels(pipe.generate(prompt, steps=3, seed=1))).all()


def test_a_hub_id_is_fetched_through_snapshot_download_without_pickles(monkeypatch, tmp_path):
    source = zoo.build("ddpm-cosine", tiny=True, device="cpu").save_pretrained(tmp_path / "snapshot")
    asked: dict[str, object] = {}

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns)
        return str(source)

    monkeypatch.setattr(base, "snapshot_download", snapshot_download)
    pipe = zoo.build(weights="someone/ddpm-shapes", device="cpu")
    assert asked["repo_id"] == "someone/ddpm-shapes" and pipe.pretrained
    patterns = asked["allow_patterns"]
    assert "*.safetensors" in patterns and "*.json" in patterns
    assert not any(p.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl", "*")) for p in patterns if p != "*.json")


def test_a_path_that_is_not_a_folder_is_refused_with_its_name(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(base.WeightsError, match="nowhere"):
        zoo.build(weights=str(missing), device="cpu")
    file = tmp_path / "file.txt"
    file.write_text("not weights")
    with pytest.raises(base.WeightsError, match=str(Path(file).name)):
        zoo.build(weights=file, device="cpu")
