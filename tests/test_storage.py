"""components/storage.py: int8 storage with per-output-channel scales, and what export does with it."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import zoo
from components import storage
from components.base import WeightsError
from zoo.train.__main__ import main


def test_every_weight_is_within_half_a_step_of_its_scale_and_small_tensors_stay_float16(tmp_path):
    torch.manual_seed(0)
    tensors = {
        "conv.weight": torch.randn(64, 32, 3, 3) * torch.logspace(-3, 1, 64).view(-1, 1, 1, 1),  # rows of all sizes
        "conv.bias": torch.randn(64),
        "small.weight": torch.randn(4, 8),
        "index": torch.arange(5),
    }
    storage.save(tensors, tmp_path / "w.safetensors", dtype="int8")
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        assert f.metadata()[storage.STORAGE_KEY] == storage.INT8
        assert f.get_tensor("conv.weight").dtype == torch.int8
        assert f.get_tensor("small.weight").dtype == torch.float16
        scale = f.get_tensor("conv.weight" + storage.SCALE_SUFFIX)
    back = storage.read(tmp_path / "w.safetensors")
    assert set(back) == set(tensors)
    w = tensors["conv.weight"]
    # s_o = max|W_o| / 127 (an independent computation of the scale), and |W - W'| <= s_o / 2 in every row
    assert torch.allclose(scale, w.abs().amax(dim=(1, 2, 3)) / 127)
    assert ((back["conv.weight"] - w).abs() <= scale.view(-1, 1, 1, 1) / 2 + 1e-7).all()
    assert torch.equal(back["index"], tensors["index"])
    assert torch.equal(back["small.weight"], tensors["small.weight"].half())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny, randomised ldm-clip-kl saved to run/ and exported as int8 to int8/ (every >= 2-dim tensor counts
    as large here, so the tiny model is quantised as the shipped ones are)."""
    folder = tmp_path_factory.mktemp("storage")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage, "MIN_QUANTISED", 0)
        torch.manual_seed(0)
        pipe = zoo.build("ldm-clip-kl", tiny=True, device="cpu")
        with torch.no_grad():
            for p in pipe.unet.parameters():
                p.add_(0.05 * torch.randn_like(p))
        pipe.save_pretrained(folder / "run")
        main(["export", "--run", str(folder / "run"), "--to", str(folder / "int8"), "--dtype", "int8"])
    return pipe, folder


def test_export_int8_stores_every_part_int8_and_they_load_close(exported, tmp_path):
    pipe, folder = exported
    shutil.copytree(folder / "int8", tmp_path / "int8")
    for part, dtype in (("unet", torch.int8), ("autoencoder", torch.int8), ("conditioner", torch.int8)):
        with safe_open(str(tmp_path / "int8" / part / "model.safetensors"), framework="pt") as f:
            stored = {f.get_tensor(k).dtype for k in f.keys()}
        assert dtype in stored, (part, stored)
    loaded = zoo.build("ldm-clip-kl", weights=tmp_path / "int8", device="cpu")
    for role in ("unet", "autoencoder", "conditioner"):
        ours, theirs = getattr(pipe, role).state_dict(), getattr(loaded, role).state_dict()
        assert set(ours) == set(theirs), role
        for name, value in ours.items():
            bound = value.abs().max().item() / 254 + 1e-3 * value.abs().max().item() + 1e-6  # s/2, or float16
            assert (theirs[name] - value).abs().max().item() <= bound, (role, name)
    # an export from the int8 folder back to float32 dequantises (the plan copies the embedded parts this way)
    main(["export", "--run", str(tmp_path / "int8"), "--to", str(tmp_path / "f32"), "--dtype", "float32"])
    back = storage.read(tmp_path / "f32" / "unet" / "model.safetensors")
    again = storage.read(tmp_path / "int8" / "unet" / "model.safetensors")
    assert all(back[k].dtype == torch.float32 and torch.equal(back[k], again[k]) for k in again)


@pytest.mark.parametrize("part", ["unet", "conditioner"])
@pytest.mark.parametrize("defect", ["scale without tensor", "int8 without scale", "unknown storage", "scale shape"])
def test_a_defective_int8_file_is_a_weights_error_naming_the_file(exported, tmp_path, defect, part):
    shutil.copytree(exported[1] / "int8", tmp_path / "int8")
    file = tmp_path / "int8" / part / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = next(k.removesuffix(storage.SCALE_SUFFIX) for k in tensors if k.endswith(storage.SCALE_SUFFIX))
    if defect == "scale without tensor":
        tensors["nothing" + storage.SCALE_SUFFIX] = torch.ones(3)
    elif defect == "int8 without scale":
        del tensors[name + storage.SCALE_SUFFIX]
    elif defect == "unknown storage":
        metadata = {**metadata, storage.STORAGE_KEY: "int4"}
    else:
        tensors[name + storage.SCALE_SUFFIX] = torch.ones(tensors[name].shape[0] + 1)
    save_file(tensors, str(file), metadata=metadata)
    before = file.read_bytes()
    with pytest.raises(WeightsError, match=str(file).replace("+", r"\+")):
        zoo.build("ldm-clip-kl", weights=tmp_path / "int8", device="cpu")
    assert file.read_bytes() == before


def test_a_reserved_tensor_name_is_refused():
    with pytest.raises(ValueError, match="reserves"):
        storage.quantise({"w" + storage.SCALE_SUFFIX: torch.ones(2, 2)})
