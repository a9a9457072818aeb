"""The app's image-to-image tab and the conditioning switch's image paths, without a server, on tiny pipelines:
each mode is the library's own call (same seed, same image), the mask painted or preset, every image guarded,
every bad input a clear error (zoo/app/image_to_image.py)."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
import torch
from app_support import pixels, quiet
from PIL import Image, ImageDraw

import zoo
from zoo.app import cache, conditioning
from zoo.app import image_to_image as tab

STEPS = 3
BLEND, REPAINT, SDEDIT = (
    "inpaint: training-free, blended step",
    "inpaint: training-free, RePaint",
    "SDEdit (image to image)",
)
TRAINED, SR = "inpaint: trained (ldm-inpaint-kl)", "super-resolution (ldm-sr-kl)"


@pytest.fixture(scope="module")
def edits(pipes) -> tab.ImageToImage:
    return tab.ImageToImage(pipes)


def edit(edits, value, modes, mask="centre square", strength=0.5, seed=3, steps=STEPS, jump=1, resample=2):
    return edits.edit(value, modes, mask, "a red circle", strength, seed, steps, jump, resample, progress=quiet)


def stroke_layer(tmp_path, size=(64, 64), box=(0, 0, 20, 20)) -> str:
    """A transparent layer with a black rectangle painted on it, as the editor saves one."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle(box, fill=(0, 0, 0, 255))
    path = tmp_path / "layer.png"
    layer.save(path)
    return str(path)


def test_every_mode_is_the_librarys_own_call_from_the_same_seed(edits, pipes, example):
    modes = [label for label in tab.MODES if edits.unavailable(label) is None]
    shown, used, summary, code = edit(edits, tab.example_value(example), modes)
    assert [caption for _, caption in shown] == modes and "Same seed 3" in summary
    image, mask = tab.example_image(example), tab.preset_mask("centre square", (64, 64))
    clip = pipes.get("ldm-clip-kl")
    expected = {
        SDEDIT: clip.generate("a red circle", image=image, strength=0.5, seed=3, steps=STEPS),
        BLEND: clip.generate("a red circle", image=image, mask_image=mask, inpaint="blend", seed=3, steps=STEPS),
        REPAINT: clip.generate(
            "a red circle",
            image=image,
            mask_image=mask,
            inpaint="repaint",
            repaint_jump=1,
            repaint_resample=2,
            sampler="ddpm",
            seed=3,
            steps=STEPS,
        ),  # fmt: skip
        TRAINED: pipes.get("ldm-inpaint-kl").generate(
            "a red circle", image=image, mask_image=mask, seed=3, steps=STEPS
        ),
    }
    if SR in modes:  # once ldm-sr-kl is registered: the image at latent resolution, no prompt
        small = image.resize((16, 16), Image.Resampling.BICUBIC)
        expected[SR] = pipes.get("ldm-sr-kl").generate(image=small, seed=3, steps=STEPS)
        assert "U-Net input 4 + 3 channels, no text" in summary and "image.resize((16, 16)" in code
    for result, label in shown:
        assert (pixels(result) == pixels(expected[label][0])).all(), label
    assert "U-Net input 4 + 5 channels" in summary and "U-Net input z_t alone (4 channels)" in summary
    assert "inpaint='repaint'" in code and "strength=0.5" in code
    red = pixels(used)[32, 32]
    assert red[0] > red[2] and (pixels(used)[2, 2] == pixels(image)[2, 2]).all()  # the mask tinted, the rest not


def test_a_mode_whose_model_the_registry_lacks_is_said_to_be_not_available(edits, example, monkeypatch):
    registered = zoo.available()
    assert "ldm-sr-kl" in registered  # it is: a zoo without it (a fork, an older version) is what is faked here
    without = {name: about for name, about in registered.items() if name != "ldm-sr-kl"}
    monkeypatch.setattr(zoo, "available", lambda: without)
    assert (f"{SR} (not available)", SR) in edits.choices()
    shown, _, summary, _ = edit(edits, tab.example_value(example), [SDEDIT, SR])
    assert [caption for _, caption in shown] == [SDEDIT]
    assert "not available (ldm-sr-kl is not in this zoo's registry yet)" in summary


def test_a_mode_the_server_does_not_offer_is_not_available(example):
    from app_support import seeded_tiny

    narrow = tab.ImageToImage(cache.PipelineCache(["ldm-clip-kl"], tiny=True, loader=seeded_tiny))
    assert narrow.unavailable(TRAINED) == "this server does not offer ldm-inpaint-kl"
    shown, _, summary, _ = edit(narrow, tab.example_value(example), [TRAINED, BLEND])
    assert [caption for _, caption in shown] == [BLEND] and "this server does not offer" in summary


def test_the_painted_strokes_are_the_mask(edits, example, tmp_path):
    value = {"background": tab.example_value(example)["background"], "layers": [stroke_layer(tmp_path)]}
    mask = tab.painted_mask(value["layers"], (64, 64))
    painted = np.asarray(mask) > 0
    assert painted[:21, :21].all() and painted.sum() == 21 * 21
    shown, used, _, _ = edit(edits, value, [BLEND], mask=tab.PAINTED)
    image = tab.example_image(example)
    direct = edits.pipes.get("ldm-clip-kl").generate(
        "a red circle", image=image, mask_image=mask, inpaint="blend", seed=3, steps=STEPS
    )
    assert (pixels(shown[0][0]) == pixels(direct[0])).all()
    assert (pixels(used)[40, 40] == pixels(image)[40, 40]).all() and (pixels(used)[5, 5] != pixels(image)[5, 5]).any()


def test_uploads_are_guarded_converted_and_resized_with_a_message(edits, tmp_path):
    upload = tmp_path / "upload.png"
    Image.new("RGBA", (128, 96), (200, 30, 30, 128)).save(upload)
    shown, used, summary, _ = edit(edits, {"background": str(upload), "layers": []}, [SDEDIT, BLEND])
    assert len(shown) == 2 and all(image.size == (64, 64) for image, _ in shown)
    assert "image is 128x96: resized to 64x64" in summary and "mask_image is resized to 64x64" in summary
    huge = tmp_path / "huge.png"
    Image.new("1", (5000, 4000)).save(huge)
    with pytest.raises(gr.Error, match="5000x4000; images up to 4096x4096"):
        edit(edits, {"background": str(huge), "layers": []}, [SDEDIT])
    with pytest.raises(gr.Error, match="5000x4000"):  # a painted layer is guarded too
        edit(edits, {"background": str(upload), "layers": [str(huge)]}, [BLEND], mask=tab.PAINTED)


def test_the_last_generated_image_and_a_dataset_example_load_into_the_editor(example, tmp_path):
    generated = tmp_path / "generated.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(generated)
    value = tab.first_of_gallery([(str(generated), None)])
    assert pixels(value["background"])[0, 0].tolist() == [10, 200, 10]
    editor = gr.ImageEditor(type="filepath")
    for loaded in (value, tab.example_value(example)):
        shown = editor.postprocess(loaded)  # the editor accepts what the buttons hand it
        assert shown.background is not None and shown.layers == []
    with pytest.raises(gr.Error, match="generate one there first"):
        tab.first_of_gallery([])
    with pytest.raises(gr.Error, match="unknown dataset example"):
        tab.example_value("9: nothing")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"value": None}, "upload an image into the editor first"),
        ({"value": {"background": None, "layers": []}}, "upload an image into the editor first"),
        ({"modes": []}, "choose at least one mode"),
        ({"modes": ["telepathy"]}, "unknown mode 'telepathy'"),
        ({"mask": "a circle"}, "unknown mask 'a circle'"),
        ({"mask": tab.PAINTED}, "paint the region to repaint"),
        ({"strength": 1.5}, "strength must be"),
        ({"steps": 0}, "steps must be an integer"),
        ({"jump": 3, "resample": 2}, "repaint_jump=3 must be below the 3 steps"),
        ({"resample": 0}, "repaint_resample must be"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_bad_inputs_raise_clear_errors(edits, example, change, message):
    args = {"value": tab.example_value(example), "modes": [SDEDIT, REPAINT], **change}
    with pytest.raises(gr.Error, match=message):
        edit(edits, args.pop("value"), args.pop("modes"), **args)


def test_the_switch_gains_the_image_paths_where_a_model_exists(pipes, example):
    switch = conditioning.Conditioning(pipes)
    assert ("image + mask (inpainting)" in conditioning.SWITCH) == ("ldm-inpaint-kl" in zoo.available())
    assert ("low-res image (super-resolution)" in conditioning.SWITCH) == ("ldm-sr-kl" in zoo.available())
    image, used, path, code = switch.switch("image + mask (inpainting)", "a red circle", example, None, 1, 2)
    mask = tab.preset_mask("centre square", (64, 64))
    direct = pipes.get("ldm-inpaint-kl").generate(
        "a red circle", image=tab.example_image(example), mask_image=mask, seed=1, steps=2, sampler="ddpm"
    )
    assert (pixels(image) == pixels(direct[0])).all() and "masked image's latent concatenated to z_t" in path
    assert (pixels(used)[32, 32] != pixels(tab.example_image(example))[32, 32]).any()  # the mask shown
    namespace: dict = {}
    torch.manual_seed(0)
    exec(code, namespace)  # the shown call, run as is
    assert (pixels(namespace["result"][0]) == pixels(image)).all()
    if "low-res image (super-resolution)" in conditioning.SWITCH:
        image, used, path, code = switch.switch("low-res image (super-resolution)", "", example, None, 1, 2)
        small = tab.example_image(example).resize((16, 16), Image.Resampling.BICUBIC)
        direct = pipes.get("ldm-sr-kl").generate(image=small, seed=1, steps=2, guidance_scale=1.0)
        assert (pixels(image) == pixels(direct[0])).all() and used.size == (16, 16) and "16x16 low-res" in path
        namespace = {}
        torch.manual_seed(0)
        exec(code, namespace)
        assert (pixels(namespace["result"][0]) == pixels(image)).all()
    prompt, source = conditioning.Conditioning.inputs_for("image + mask (inpainting)")
    assert prompt.interactive is True and source.interactive is True
