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


class Connections:
    """socket.create_connection as the Hub probe sees it: refused (offline) or opened (online), calls counted."""

    def __init__(self, online: bool):
        self.online, self.calls = online, 0

    def __call__(self, address, timeout=None):
        self.calls += 1
        if not self.online:
            raise OSError(101, "Network is unreachable")
        return type("Opened", (), {"close": lambda self: None})()


def hub_state(monkeypatch, tmp_path, *, offline: bool, online: bool) -> tuple[Connections, list[dict]]:
    """HF_HUB_OFFLINE and the network as chosen, an empty huggingface_hub cache, snapshot_download recorded (a
    call that may use the network returns a saved folder; a cache-only call finds nothing, as huggingface_hub's)."""
    import huggingface_hub.constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    source = zoo.build("ddpm-cosine", tiny=True, device="cpu").save_pretrained(tmp_path / "snapshot")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(base, "_probed", {})
    connections, asked = Connections(online), []
    monkeypatch.setattr(base.socket, "create_connection", connections)

    def snapshot_download(repo_id, **kwargs):
        asked.append(kwargs)
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        return str(source)

    monkeypatch.setattr(base, "snapshot_download", snapshot_download)
    return connections, asked


def test_a_missing_hub_id_offline_fails_at_once_naming_what_was_looked_for(monkeypatch, tmp_path):
    connections, asked = hub_state(monkeypatch, tmp_path, offline=True, online=True)
    with pytest.raises(base.WeightsError) as raised:
        zoo.build(weights="someone/not-here", device="cpu")
    message = str(raised.value)
    assert "'someone/not-here' is no folder here" in message and str(Path("someone/not-here").resolve()) in message
    assert str(tmp_path / "hub-cache") in message and "HF_HUB_OFFLINE is set" in message
    assert "unset HF_HUB_OFFLINE before Python starts" in message
    assert connections.calls == 0 and [kwargs["local_files_only"] for kwargs in asked] == [True]


def test_hf_hub_offline_set_after_import_is_honoured_too(monkeypatch, tmp_path):
    connections, asked = hub_state(monkeypatch, tmp_path, offline=False, online=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub read it at import: its constant stays False
    with pytest.raises(base.WeightsError, match="HF_HUB_OFFLINE is set"):
        zoo.build(weights="someone/not-here", device="cpu")
    assert connections.calls == 0 and all(kwargs["local_files_only"] for kwargs in asked)


def test_an_unreachable_hub_is_probed_once_and_only_the_cache_is_read(monkeypatch, tmp_path):
    connections, asked = hub_state(monkeypatch, tmp_path, offline=False, online=False)
    with pytest.raises(base.WeightsError, match=r"the Hub was not asked: cannot connect to huggingface.co:443 .*unr"):
        zoo.build(weights="someone/not-here", device="cpu")
    assert connections.calls == 1 and asked and all(kwargs["local_files_only"] for kwargs in asked)
    with pytest.raises(base.WeightsError, match="connect to the internet"):  # the probe's answer is reused
        zoo.build(weights="someone/not-here", device="cpu")
    assert connections.calls == 1


def test_online_the_hub_id_is_downloaded_as_before(monkeypatch, tmp_path):
    connections, asked = hub_state(monkeypatch, tmp_path, offline=False, online=True)
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    def hf_hub_download(repo_id, filename, **kwargs):  # asked online: the repo has no model_index.json
        asked.append({"file": filename})
        raise EntryNotFoundError(f"{repo_id} has no {filename}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    pipe = zoo.build(weights="someone/ddpm-shapes", device="cpu")
    assert pipe.pretrained and connections.calls == 1
    assert asked[0] == {"file": "model_index.json"} and "local_files_only" not in asked[1]
