"""End to end: `python app.py` as a subprocess on a free port, every named endpoint driven with gradio_client.

The server runs with ZOO_APP_TINY=1 (zoo/app/cache.py): tiny random pipelines, so each call takes well under a
second on a CPU. The images are checked for size, for not being blank and for the seeded result repeating;
bad inputs must come back as clear errors while the server keeps serving. The Space bundle is assembled with
`spaces/deploy.py --dry-run` and its app started from the bundle's folder.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gradio
import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client", reason="the end-to-end test drives the app with gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from zoo.app.conditioning import SWITCH  # noqa: E402
from zoo.app.server import serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "1: "  # the dataset examples' labels start with their number


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[Client]:
    with serve(ROOT, tmp_path_factory.mktemp("app") / "app.log") as url:
        yield Client(url, verbose=False)


@pytest.fixture(scope="module")
def example(client) -> str:
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/forward_noise"]
    choices = info["parameters"][0]["type"]["enum"]
    return next(c for c in choices if c.startswith(EXAMPLE))


def picture(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def assert_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """The file is a PNG of `size` that is not blank (its pixels vary)."""
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
    pixels = picture(path)
    assert pixels.std() > 1.0, f"{path} is blank"
    return pixels


def generate(client: Client, seed: int, **changes) -> tuple:
    args = {
        "name": "ldm-clip-kl", "prompt": "a red circle on a blue background", "negative_prompt": "", "sampler": "ddim",
        "steps": 2, "guidance_scale": 3.0, "seed": seed, "randomize_seed": False, "num_images": 2,
    }  # fmt: skip
    args.update(changes)
    return client.predict(*args.values(), api_name="/generate")


def test_every_named_endpoint_is_listed(client):
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    views = {"/compare_samplers", "/swap", "/inspect_autoencoders", "/one_step", "/image_to_image", "/loss"}
    assert named == {"/generate", "/forward_noise", "/switch", "/switch_all", "/zoo_table", "/components"} | views


def test_generate_draws_seeded_png_images_and_a_trajectory(client):
    gallery, trajectory, info, code, seed = generate(client, seed=11)
    again, *_ = generate(client, seed=11)
    other, *_ = generate(client, seed=12)
    assert seed == 11 and len(gallery) == 2 and len(trajectory) == 2
    first = assert_image(gallery[0]["image"], (64, 64))
    assert (first == picture(again[0]["image"])).all()  # the same seed, the same image
    assert (first != picture(other[0]["image"])).any()
    assert trajectory[-1]["caption"] == "step 2/2"
    assert "random weights: not trained yet" in info and 'zoo.build("ldm-clip-kl", tiny=True)' in code


def test_every_sampler_and_the_pixel_pipeline_run(client):
    for sampler in ("ddpm", "dpmpp"):
        gallery, *_ = generate(client, seed=0, sampler=sampler, num_images=1)
        assert_image(gallery[0]["image"], (64, 64))
    gallery, _, info, _, _ = generate(client, seed=0, name="ddpm-cosine", num_images=1)
    assert_image(gallery[0]["image"], (64, 64))
    assert "unconditional" in info


def test_forward_noise_from_an_example_and_from_an_upload(client, example, tmp_path):
    x_t, strip, abar, log_snr, formula, code = client.predict(
        example, None, 20, "cosine", "pixel", 0, api_name="/forward_noise"
    )
    assert_image(x_t, (64, 64))
    assert Image.open(strip).size[1] > 128 and "DDPM Eq. 4" in formula and "closed_form" in code
    upload = tmp_path / "grey.png"
    Image.fromarray(np.arange(50 * 80, dtype=np.uint8).reshape(50, 80)).save(upload)  # mode L, not square
    x_t, *_ = client.predict("upload", handle_file(str(upload)), 10, "linear", "latent", 0, api_name="/forward_noise")
    assert_image(x_t, (64, 64))


def test_conditioning_switch_one_path_and_all_four(client, example):
    image, used_map, path, code = client.predict("semantic map", "", example, None, 3, 2, api_name="/switch")
    assert_image(image, (64, 64))
    assert_image(used_map, (64, 64))  # the label map at its own size, exact palette colours
    assert "concatenated to z_t" in path
    gallery, summary = client.predict("a red circle", example, None, 3, 1, api_name="/switch_all")
    assert len(gallery) == len(SWITCH) >= 4 and "Same seed 3" in summary
    for item in gallery:
        assert_image(item["image"], (64, 64))


def test_image_to_image_every_mode_side_by_side(client, tmp_path):
    upload = tmp_path / "upload.png"
    Image.fromarray(np.arange(96 * 80 * 3, dtype=np.uint8).reshape(96, 80, 3)).save(upload)  # not square
    editor = {"background": handle_file(str(upload)), "layers": [], "composite": None}
    modes = ["SDEdit (image to image)", "inpaint: training-free, blended step", "inpaint: training-free, RePaint"]
    gallery, used, summary, code = client.predict(
        editor, modes, "centre square", "a red circle", 0.6, 3, 3, 1, 2, api_name="/image_to_image"
    )
    assert [item["caption"] for item in gallery] == modes and "Same seed 3" in summary
    for item in gallery:
        assert_image(item["image"], (64, 64))
    assert_image(used, (80, 96))  # the input as given, the region to repaint tinted
    assert "image is 80x96: resized to 64x64" in summary and "inpaint='repaint'" in code


def test_zoo_tables(client):
    table = client.predict(api_name="/zoo_table")
    assert [row[0] for row in table["data"]][:1] == ["ldm-clip-kl"] and "parameters" in table["headers"]
    components = client.predict(api_name="/components")
    assert {"unet", "autoencoder", "conditioner"} <= {row[0] for row in components["data"]}


def test_samplers_from_one_x_T(client):
    gallery, plot, info = client.predict("ldm-clip-kl", "a red circle", 3, 3.0, 4, 0.5, api_name="/compare_samplers")
    assert [item["caption"].split(":")[0] for item in gallery] == ["DDPM", "DDIM (eta 0.5)", "DPM-Solver++"]
    for item in gallery:
        assert_image(item["image"], (64, 64))
    assert "3 U-Net calls" in gallery[0]["caption"] and len(plot["data"]) == 3 * 2 and "| DDIM (eta 0.5) | 3 |" in info


def test_swap_one_part(client):
    gallery, info = client.predict("KL <-> VQ, the same CLIP conditioner", "a red circle", 2, 2, api_name="/swap")
    assert [item["caption"].split(" ")[0] for item in gallery] == ["ldm-clip-kl", "ldm-clip-vq"]
    for item in gallery:
        assert_image(item["image"], (64, 64))
    assert "autoencoder: kl-f4 -> vq-f4" in info


def test_autoencoder_inspector(client, example):
    gallery, table = client.predict(example, None, api_name="/inspect_autoencoders")
    assert len(gallery) == 5 and "PSNR (dB)" in table and "codes" in table
    assert_image(gallery[1]["image"], (64, 64))


def test_one_step_opened_up(client):
    gallery, info = client.predict("ldm-clip-kl", "a red circle", "ddim", 3, 3.0, 0, 2, api_name="/one_step")
    assert [item["caption"] for item in gallery][1:4] == ["eps_uncond", "eps_cond", "guided, w = 3"]
    assert "U-Net call 2 of 3" in info


def test_loss_view_plots_the_bound_of_each_objective(client, example):
    estimator = "every 10th t above 50, and the last (146 of 1000 terms)"
    names = ["ddpm-simple-32", "ddpm-hybrid-32", "ddpm-vlb-32"]
    image, terms, running, mse, info, code = client.predict(names, example, None, estimator, 0, api_name="/loss")
    assert_image(image, (32 * 8, 32 * 8 + 14))
    for plot in (terms, running, mse):
        assert len(plot["data"]) == 3 * 50  # tiny T = 50: L_0 and the 49 KL terms, per pipeline
    assert all(f"| {name} (random weights) |" in info for name in names) and ".vlb(x, stride=10" in code


@pytest.mark.parametrize(
    ("api_name", "args", "message"),
    [
        ("/generate", ("ldm-nope", "", "", "ddim", 2, 3.0, 0, False, 1), "ldm-nope"),
        ("/generate", ("ldm-clip-kl", "", "", "ddim", 10**6, 3.0, 0, False, 1), "1000000"),
        ("/generate", ("ldm-clip-kl", "", "", "ddim", 2, 3.0, 0, False, 9), "4"),
        ("/forward_noise", ("upload", None, 10, "linear", "pixel", 0), "upload an image first"),
        ("/switch", ("semantic map", "", "drawn on the sketchpad", None, 0, 2), "draw a semantic map"),
        (
            "/image_to_image",
            (None, ["SDEdit (image to image)"], "centre square", "", 0.5, 0, 2, 1, 1),
            "upload an image",
        ),
        ("/loss", ([], "upload", None, "exact: every t (all 1000 terms, about 7x the time)", 0), "pick at least one"),
    ],
)
def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(client, api_name, args, message):
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name=api_name)
    gallery, *_ = generate(client, seed=0, steps=1, num_images=1)
    assert_image(gallery[0]["image"], (64, 64))


def test_the_space_bundle_assembles_and_serves(tmp_path):
    bundle = tmp_path / "space"
    subprocess.run([sys.executable, "spaces/deploy.py", "--dry-run", "--out", str(bundle)], cwd=ROOT, check=True)
    front_matter = (bundle / "README.md").read_text().split("---")[1]
    assert f"sdk_version: {gradio.__version__}" in front_matter and "app_file: app.py" in front_matter
    assert (bundle / "requirements.txt").is_file() and (bundle / "zoo" / "app" / "text_to_image.py").is_file()
    assert not list(bundle.rglob("__pycache__")) and not (bundle / "tests").exists()
    with serve(bundle, tmp_path / "bundle.log") as url:
        table = Client(url, verbose=False).predict(api_name="/zoo_table")
    assert table["data"][0][0] == "ldm-clip-kl"
    again = [sys.executable, "spaces/deploy.py", "--dry-run", "--out", str(bundle)]
    refused = subprocess.run(again, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and "is not an empty folder" in refused.stderr
    no_repo = subprocess.run([sys.executable, "spaces/deploy.py"], cwd=ROOT, capture_output=True, text=True)
    assert no_repo.returncode == 2 and "--repo user/name" in no_repo.stderr
