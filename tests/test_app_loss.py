"""The loss view without a server, on tiny loss-study pipelines (zoo/app/loss.py): the bound's terms per t beside
L_simple's MSE, the totals as pipe.vlb gives them, the image as the study's training images are made, refusals."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from zoo.app import display, loss
from zoo.train.plan import LOSS_STUDY
from zoo.train.stages import downsample

STRIDE = next(iter(loss.STRIDES))


@pytest.fixture(scope="module")
def view(pipes) -> loss.LossView:
    return loss.LossView(pipes)


def test_the_view_builds_alone_and_names_its_endpoint(view):
    with gr.Blocks() as demo:
        parts = loss.tab(view)
    assert isinstance(parts["button"], gr.Button) and len(parts["plots"]) == 3
    assert "loss" in {fn.api_name for fn in demo.fns.values()}
    assert view.choices() == list(LOSS_STUDY)  # the app offers the three objectives by default


def test_the_image_is_made_as_the_studys_training_images(example):
    item = display.examples()[example]
    x = loss.study_image(Image.fromarray(item["image_uint8"]), 32)
    pixels = torch.from_numpy(item["image_uint8"]).permute(2, 0, 1)[None]
    torch.testing.assert_close(x, downsample(pixels, 32).float() / 127.5 - 1, rtol=0, atol=0)
    levels = (x + 1) * 127.5
    assert x.shape == (1, 3, 32, 32) and (levels - levels.round()).abs().max() < 1e-4  # on the 256 bins


def test_the_plots_and_totals_are_pipe_vlbs_for_each_objective(view, pipes, example):
    image, terms, running, mse, info, code = view.loss(list(LOSS_STUDY), example, None, STRIDE, 3)
    assert image.size == (32 * 8, 32 * 8 + 14)
    x = loss.study_image(Image.fromarray(display.examples()[example]["image_uint8"]), 32)
    assert sorted(set(terms.pipeline)) == sorted(LOSS_STUDY)
    for name in LOSS_STUDY:
        pipe = pipes.get(name)
        bound = pipe.vlb(x, stride=loss.STRIDES[STRIDE], exact_below=loss.EXACT_BELOW, seed=3)
        mine = running[running.pipeline == name]
        assert len(mine) == len(bound.timesteps) + 1 and mine.t.tolist()[0] == 1  # L_0 at the paper's t = 1
        total = mine["bits/dim so far"].iloc[-1] + float(bound.prior[0])  # the running sum ends at the bound
        assert total == pytest.approx(float(bound.total[0]), rel=1e-5)
        assert f"| {name} (random weights) | {pipe.recipe.objective}, {pipe.recipe.variance} |" in info
        assert f"{bound.total[0]:.3f}" in info
        shown = mse[mse.pipeline == name]["||eps - eps_theta||^2"].to_numpy()
        np.testing.assert_allclose(shown, [float(bound.decoder_mse[0]), *bound.mse[0].tolist()], rtol=1e-6)
        logs = terms[terms.pipeline == name]["log10 bits/dim"].to_numpy()
        np.testing.assert_allclose(10 ** logs[1:], bound.kl[0].numpy(), rtol=1e-4)
    assert "x0_hat clipped" in info and ".vlb(x, stride=10" in code and "tiny=True" in code


def test_one_pipeline_and_an_upload_of_any_mode_and_size(view, tmp_path):
    upload = tmp_path / "grey.png"
    Image.fromarray(np.arange(50 * 80, dtype=np.uint8).reshape(50, 80)).save(upload)  # mode L, not square
    image, terms, *_, info, _ = view.loss(["ddpm-vlb-32"], loss.UPLOAD, str(upload), STRIDE, 0)
    assert set(terms.pipeline) == {"ddpm-vlb-32"} and info.count("| ddpm-vlb-32") == 1
    assert np.asarray(image).std() > 1.0  # the grey ramp, not a blank


@pytest.mark.parametrize(
    ("names", "source", "stride", "seed", "message"),
    [
        ([], None, STRIDE, 0, "pick at least one pipeline"),
        ("ddpm-vlb-32", None, STRIDE, 0, "pick at least one pipeline"),  # a string, not a list of names
        (["ldm-clip-kl"], None, STRIDE, 0, "unknown pipeline 'ldm-clip-kl'"),
        (["ddpm-vlb-32"], None, "every 3rd", 0, "unknown estimator"),
        (["ddpm-vlb-32"], None, STRIDE, -1, "seed"),
        (["ddpm-vlb-32"], loss.UPLOAD, STRIDE, 0, "upload an image first"),
    ],
)
def test_bad_inputs_get_clear_errors(view, example, names, source, stride, seed, message):
    with pytest.raises(gr.Error, match=message):
        view.loss(names, source or example, None, stride, seed)
