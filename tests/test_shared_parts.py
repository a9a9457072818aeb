"""zoo/shared_parts.py: a part stored once for several embedded pipelines, checked by digest when loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import zoo
from components.base import WeightsError
from zoo import shared_parts
from zoo.pipeline_io import component_class
from zoo.train.__main__ import main


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """weights/a: a tiny ldm-clip-kl; weights/b: the same pipeline exported with --share (its parts all a's)."""
    folder = tmp_path_factory.mktemp("shared")
    torch.manual_seed(0)
    zoo.build("ldm-clip-kl", tiny=True, device="cpu").save_pretrained(folder / "run")
    main(["export", "--run", str(folder / "run"), "--to", str(folder / "weights" / "a"), "--dtype", "int8"])
    main(["export", "--run", str(folder / "run"), "--to", str(folder / "weights" / "b"), "--dtype", "int8", "--share"])
    return folder


def copy(root, tmp_path):
    shutil.copytree(root / "weights", tmp_path / "weights")
    return tmp_path / "weights"


def test_an_identical_part_is_stored_once_and_the_pipeline_loads_the_same_modules(root):
    b = root / "weights" / "b"
    assert sorted(p.name for p in b.iterdir() if p.is_dir()) == []  # every part of the tiny copy is a's
    assert {p.name for p in b.glob("*.shared.json")} == {
        f"{r}.shared.json" for r in ("unet", "autoencoder", "conditioner")
    }
    one, two = zoo.build("ldm-clip-kl", weights=root / "weights" / "a"), zoo.build("ldm-clip-kl", weights=b)
    for role in ("unet", "autoencoder", "conditioner"):
        mine, theirs = getattr(one, role).state_dict(), getattr(two, role).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), role


def test_a_shared_part_that_changed_is_an_error_naming_the_link_and_the_file(root, tmp_path):
    weights = copy(root, tmp_path)
    config = weights / "a" / "autoencoder" / "config.json"
    config.write_text(config.read_text() + "\n")  # one byte more: the digest differs
    with pytest.raises(WeightsError, match=r"autoencoder\.shared\.json.*config\.json"):
        zoo.build("ldm-clip-kl", weights=weights / "b")


@pytest.mark.parametrize("same_as", ["../a/unet", "/etc/unet", "a/unet/x", "c/unet", 5])
def test_a_link_that_leaves_the_root_or_names_nothing_is_refused(root, tmp_path, same_as):
    weights = copy(root, tmp_path)
    link = weights / "b" / "unet.shared.json"
    data = json.loads(link.read_text())
    link.write_text(json.dumps({**data, "same_as": same_as}))
    with pytest.raises(WeightsError, match="unet.shared.json"):
        zoo.build("ldm-clip-kl", weights=weights / "b")


def test_exporting_a_folder_that_shares_copies_the_parts_in_full(root, tmp_path):
    main(["export", "--run", str(root / "weights" / "b"), "--to", str(tmp_path / "full"), "--dtype", "float32"])
    assert sorted(p.name for p in (tmp_path / "full").iterdir() if p.is_dir()) == [
        "autoencoder",
        "conditioner",
        "unet",
    ]
    assert not list((tmp_path / "full").glob("*.shared.json"))
    zoo.build("ldm-clip-kl", weights=tmp_path / "full")


def test_a_part_others_share_stays_whole_when_its_pipeline_is_exported_again(root, tmp_path):
    weights = copy(root, tmp_path)
    main(["export", "--run", str(weights / "a"), "--to", str(weights / "a"), "--dtype", "int8", "--share"])
    assert (weights / "a" / "unet").is_dir() and not list((weights / "a").glob("*.shared.json"))
    zoo.build("ldm-clip-kl", weights=weights / "b")
    assert shared_parts.part_folder(weights / "b", "unet") == weights / "a" / "unet"


def new_decoder(weights, tmp_path):
    """a's autoencoder with its decoder changed (as `zoo.train decoder` changes it), saved as a part folder."""
    ae = component_class("autoencoder", "kl-f4").from_pretrained(weights / "a" / "autoencoder")
    with torch.no_grad():
        for p in ae.decoder.parameters():
            p.add_(0.01)
    ae.save_pretrained(tmp_path / "decoder")
    return ae, tmp_path / "decoder"


def test_a_replaced_part_reaches_every_pipeline_that_shares_it(root, tmp_path):
    weights = copy(root, tmp_path)
    ae, folder = new_decoder(weights, tmp_path)
    for name in ("a", "b"):  # the owner first, then the pipeline that links to it
        main(["export", "--run", str(weights / name), "--to", str(weights / name), "--dtype", "int8", "--share",
              "--part", f"autoencoder={folder}"])  # fmt: skip
    assert (weights / "b" / "autoencoder.shared.json").is_file() and not (weights / "b" / "autoencoder").exists()
    expected = ae.state_dict()
    old = zoo.build("ldm-clip-kl", weights=root / "weights" / "a").autoencoder.state_dict()["decoder.conv_out.weight"]
    for name in ("a", "b"):
        pipe = zoo.build("ldm-clip-kl", weights=weights / name)
        got = pipe.autoencoder.state_dict()
        assert all(torch.allclose(got[k], expected[k], atol=2e-3 * expected[k].abs().max() + 1e-6) for k in got)
        assert not torch.allclose(got["decoder.conv_out.weight"], old, atol=1e-3)


def test_replacing_one_part_leaves_every_other_file_byte_for_byte(root, tmp_path):
    weights = copy(root, tmp_path)
    _, folder = new_decoder(weights, tmp_path)
    a = weights / "a"
    (a / "training.json").write_text('{"made_by": ["how"]}')
    (a / "evaluation.json").write_text('{"adherence_seen": {}}')  # measured with the old decoder
    before = {f.relative_to(a): f.read_bytes() for f in a.rglob("*") if f.is_file()}
    main(["export", "--run", str(a), "--to", str(a), "--dtype", "int8", "--part", f"autoencoder={folder}"])
    after = {f.relative_to(a): f.read_bytes() for f in a.rglob("*") if f.is_file()}
    changed = sorted(str(name) for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert "evaluation.json" not in after.keys() and after[Path("training.json")] == before[Path("training.json")]
    changed.remove("evaluation.json")  # dropped: it no longer describes these weights
    assert changed == ["autoencoder/config.json", "autoencoder/model.safetensors"] or changed == [
        "autoencoder/model.safetensors"
    ]


def test_stored_as_reads_the_form_save_wrote(tmp_path):
    from components import storage

    tensors = {"w": torch.randn(128, 256), "b": torch.randn(128), "step": torch.tensor(3)}
    for dtype in ("int8", "float16", "float32"):
        storage.save(tensors, tmp_path / f"{dtype}.safetensors", dtype=dtype)
        assert storage.stored_as(tmp_path / f"{dtype}.safetensors") == dtype
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2), "b": torch.zeros(2, dtype=torch.float16)}, str(tmp_path / "mixed.safetensors"))
    assert storage.stored_as(tmp_path / "mixed.safetensors") is None


def test_a_grown_decoder_replaces_an_autoencoder_saved_before_the_field_existed(root, tmp_path):
    from components.autoencoders.blocks import grow_decoder

    weights = copy(root, tmp_path)
    config = weights / "a" / "autoencoder" / "config.json"
    data = json.loads(config.read_text())
    del data["decoder_extra_blocks"]  # as the shipped autoencoders' config.json files
    config.write_text(json.dumps(data))
    before = zoo.build("ldm-clip-kl", weights=weights / "a").autoencoder
    grown = grow_decoder(before, 1)
    with torch.no_grad():
        grown.decoder.up[-1].res[-1].conv2.weight.add_(0.05)  # trained a little: no longer the identity
    grown.save_pretrained(tmp_path / "grown")
    main(["export", "--run", str(weights / "a"), "--to", str(weights / "a"), "--dtype", "int8",
          "--part", f"autoencoder={tmp_path / 'grown'}"])  # fmt: skip
    after = zoo.build("ldm-clip-kl", weights=weights / "a").autoencoder
    assert after.config.decoder_extra_blocks == 1 and after.config.scaling_factor == before.config.scaling_factor
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = before.encode(x)
        torch.testing.assert_close(after.encode(x), z, rtol=0, atol=1e-3)  # the latents every U-Net knows
        assert not torch.allclose(after.decode(z), before.decode(z), atol=1e-3)  # the decoder did change
    wider = component_class("autoencoder", "kl-f4")(before.config.replace(scaling_factor=0.5))
    wider.save_pretrained(tmp_path / "rescaled")
    with pytest.raises(SystemExit, match=r"differs .* in \['scaling_factor'\]"):  # an interface field: refused
        main(["export", "--run", str(weights / "a"), "--to", str(weights / "a"), "--dtype", "int8",
              "--part", f"autoencoder={tmp_path / 'rescaled'}"])  # fmt: skip


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ("unet={folder}", r"config differs .* in \[.*\]"),
        ("vae={folder}", "no part 'vae'"),
        ("autoencoder", "ROLE=FOLDER"),
    ],
)
def test_a_part_that_does_not_fit_is_refused_and_the_export_changes_nothing(root, tmp_path, part, message):
    weights = copy(root, tmp_path)
    _, folder = new_decoder(weights, tmp_path)
    before = shared_parts.digests(weights / "a" / "autoencoder")
    with pytest.raises(SystemExit, match=message):
        main(["export", "--run", str(weights / "a"), "--to", str(weights / "a"), "--dtype", "int8",
              "--part", part.format(folder=folder)])  # fmt: skip
    assert shared_parts.digests(weights / "a" / "autoencoder") == before
    assert sorted(p.name for p in weights.iterdir()) == ["a", "b"]  # no staging folder left behind


def test_exporting_the_same_weights_again_keeps_each_file_byte_for_byte(root, tmp_path):
    """The safetensors library writes its metadata map in no fixed order, so saving the same tensors twice can give
    other bytes; an export whose file holds what the target's already does keeps the target's bytes (a part other
    pipelines share is checked by its digest). The target's header is laid out as the library never would, so a
    rewrite cannot match it by chance."""
    import struct

    from components import storage

    weights = copy(root, tmp_path)
    main(["export", "--run", str(weights / "a"), "--to", str(tmp_path / "run32"), "--dtype", "float32"])
    file = weights / "a" / "unet" / "model.safetensors"
    data = file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.dumps(dict(reversed(json.loads(data[8 : 8 + n]).items())), indent=1).encode()
    header += b" " * (-len(header) % 8)
    crafted = struct.pack("<Q", len(header)) + header + data[8 + n :]
    file.write_bytes(crafted)
    assert storage.same_content(file, tmp_path / "run32" / "unet" / "model.safetensors") is False  # float32 there
    before = {p.relative_to(weights): p.read_bytes() for p in (weights / "a").rglob("*") if p.is_file()}
    main(["export", "--run", str(tmp_path / "run32"), "--to", str(weights / "a"), "--dtype", "int8"])
    after = {p.relative_to(weights): p.read_bytes() for p in (weights / "a").rglob("*") if p.is_file()}
    assert after == before and after[file.relative_to(weights)] == crafted
    kept, source = storage.read(file), storage.read(tmp_path / "run32" / "unet" / "model.safetensors")
    assert kept.keys() == source.keys() and all(torch.equal(kept[k], source[k]) for k in kept)  # and it reads


def test_a_part_saved_by_another_library_version_is_still_shared_and_a_real_difference_is_not(root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    config = run / "conditioner" / "config.json"
    data = json.loads(config.read_text())
    data["transformers_version"] = "0.0.1"  # what another transformers release stamps; the tower is the same
    config.write_text(json.dumps(data, indent=2))
    weights = copy(root, tmp_path)
    main(["export", "--run", str(run), "--to", str(weights / "c"), "--dtype", "int8", "--share"])
    link = json.loads((weights / "c" / "conditioner.shared.json").read_text())
    assert link == {"same_as": "a/conditioner", "sha256": shared_parts.digests(weights / "a" / "conditioner")}
    assert zoo.build("ldm-clip-kl", weights=weights / "c").conditioner is not None  # the link verifies and loads
    data["max_position_embeddings"] = data["max_position_embeddings"] + 1  # a field of the part itself
    config.write_text(json.dumps(data, indent=2))
    main(["export", "--run", str(run), "--to", str(weights / "d"), "--dtype", "int8", "--share"])
    assert (weights / "d" / "conditioner").is_dir() and not (weights / "d" / "conditioner.shared.json").exists()
