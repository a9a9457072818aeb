"""The loss view: where the bound's code length goes. One image through the three loss-study models (the same
32x32 U-Net trained with L_simple, L_hybrid and L_vlb; README "L_simple vs the bound"), side by side: each term of
the variational bound (DDPM Eq. 5: L_0, every L_{t-1}, L_T) in bits/dim against t, the running total of the code
length, L_simple's unweighted ||eps - eps_theta||^2 per t at the same x_t (Eq. 14), and the totals.

Every number comes from `pipe.vlb` (zoo/pipelines/pixel.py): the images are checked there, the timesteps are
batched there, and its estimator is stated with the totals. Indices: the network's 0-based t = k is the paper's
t = k + 1, and the term it gives is L_{t-1} = L_k; L_0 (the decoder) sits at the paper's t = 1.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import torch
from PIL import Image

from zoo.app import display
from zoo.app.cache import PipelineCache
from zoo.app.forward_noise import UPLOAD, source_image
from zoo.app.guard import check_choice, fail, handler, number, on_gpu
from zoo.pipelines.base import MAX_SEED, check_seed, to_pil
from zoo.train.plan import LOSS_STUDY
from zoo.train.stages import downsample

DATA_SIZE = 64  # the dataset's side; the study's 32x32 images are its 2x2 block averages (as in training)
STRIDES = {  # label -> stride of pipe.vlb's estimator (the KL terms t < EXACT_BELOW are always exact)
    "every 10th t above 50, and the last (146 of 1000 terms)": 10,
    "every 5th t above 50, and the last (241 of 1000 terms)": 5,
    "exact: every t (all 1000 terms, about 7x the time)": 1,
}
EXACT_BELOW = 50
BATCH = 64  # images per U-Net call: 64 timesteps of the one image at once


def study_image(image: Image.Image, size: int) -> torch.Tensor:
    """(1, 3, size, size) on the 256 bins: resized to the dataset's 64x64 (bicubic, as the other tabs take images)
    when it is not, then 2x2 block averages rounded to 8-bit levels, exactly as the study's training images."""
    if image.size != (DATA_SIZE, DATA_SIZE):
        image = image.resize((DATA_SIZE, DATA_SIZE), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)[None]
    return downsample(pixels, size).float() / 127.5 - 1  # (1, 3, 64, 64) uint8 -> (1, 3, size, size) in [-1, 1]


def curves(name: str, bound: Any) -> dict[str, pd.DataFrame]:
    """One pipeline's plotted series against the paper's t: log10 of each term, the running total, the MSE."""
    t = np.concatenate([[1], bound.timesteps.numpy() + 1])  # L_0 at t = 1, L_{t-1} at t
    terms = np.concatenate([bound.decoder.numpy(), bound.kl[0].numpy()])
    weights = np.concatenate([[1.0], bound.weights.numpy()])  # how many terms each evaluated one stands for
    mse = np.concatenate([bound.decoder_mse.numpy(), bound.mse[0].numpy()])
    return {
        "terms": pd.DataFrame({"t": t, "log10 bits/dim": np.log10(np.maximum(terms, 1e-12)), "pipeline": name}),
        "running": pd.DataFrame({"t": t, "bits/dim so far": np.cumsum(terms * weights), "pipeline": name}),
        "mse": pd.DataFrame({"t": t, "||eps - eps_theta||^2": mse, "pipeline": name}),
    }


def totals_row(name: str, pipe: Any, bound: Any, seconds: float) -> str:
    """| pipeline | objective | total | L_T | sum of L_{t-1} | L_0 | L_simple | seconds |, in bits/dim."""
    kl = float((bound.kl[0] * bound.weights.float()).sum())
    l_simple = float(((bound.mse[0] * bound.weights.float()).sum() + bound.decoder_mse[0]) / pipe.num_timesteps)
    recipe = pipe.recipe
    untrained = " (random weights)" if not pipe.pretrained else ""
    cells = [f"{bound.total[0]:.3f}", f"{bound.prior[0]:.2e}", f"{kl:.3f}", f"{bound.decoder[0]:.3f}"]
    cells += [f"{l_simple:.4f}", f"{seconds:.1f}"]
    return f"| {name}{untrained} | {recipe.objective}, {recipe.variance} | {' | '.join(cells)} |"


def loss_code(names: list[str], tiny: bool, stride: int, seed: int) -> str:
    build = ", tiny=True" if tiny else ""
    lines = ["import zoo", "from zoo.app.loss import study_image", ""]
    lines.append("x = study_image(image, 32)  # 64x64, then 2x2 block averages on 8-bit levels")
    for name in names:
        lines.append(
            f'bound = zoo.build("{name}"{build}).vlb(x, stride={stride}, exact_below={EXACT_BELOW}, seed={seed})'
        )
        lines.append("print(bound.total, bound.prior, bound.kl, bound.decoder, bound.mse)  # bits/dim; mse per t")
    return "\n".join(lines) + "\n"


class LossView:
    """The view's handler over the app's pipeline cache."""

    def __init__(self, pipes: PipelineCache):
        self.pipes = pipes

    def choices(self) -> list[str]:
        """The loss-study pipelines this server offers."""
        return [name for name in LOSS_STUDY if name in self.pipes.names()]

    def checked(self, names: Any) -> list[str]:
        """The chosen pipelines, each once, each one of `choices`; at least one."""
        if not isinstance(names, list | tuple) or not names:
            raise fail(f"pick at least one pipeline of: {', '.join(self.choices())}")
        return [check_choice("pipeline", name, self.choices()) for name in dict.fromkeys(names)]

    def bounds(self, names: list[str], x: torch.Tensor, stride: int, seed: int) -> dict[str, tuple[Any, float]]:
        """name -> (pipe.vlb's Bound of x, seconds it took), for each chosen pipeline."""
        found = {}
        for name in names:
            pipe = self.pipes.get(name)
            start = time.perf_counter()
            bound = pipe.vlb(x, stride=stride, exact_below=EXACT_BELOW, seed=seed, batch=BATCH)
            found[name] = (bound, time.perf_counter() - start)
        return found

    @handler
    @on_gpu
    def loss(
        self, names: list[str], example: str, upload: Any, stride: str, seed: int
    ) -> tuple[Image.Image, pd.DataFrame, pd.DataFrame, pd.DataFrame, str, str]:
        """The image as the models see it, three plots (terms, running total, MSE), the totals and the code."""
        names = self.checked(names)
        stride_value = STRIDES[check_choice("estimator", stride, list(STRIDES))]
        seed = check_seed(seed)
        size = self.pipes.get(names[0]).recipe.image_size
        x = study_image(source_image(example, upload), size)
        found = self.bounds(names, x, stride_value, seed)
        parts: dict[str, list[pd.DataFrame]] = {"terms": [], "running": [], "mse": []}
        rows = [
            "| pipeline | objective, variance | total | L_T | sum of L_{t-1} | L_0 | L_simple (mean MSE) | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, (bound, seconds) in found.items():
            for key, frame in curves(name, bound).items():
                parts[key].append(frame)
            rows.append(totals_row(name, self.pipes.get(name), bound, seconds))
        estimator = next(iter(found.values()))[0].estimator
        info = "\n".join([*rows, "", f"bits/dim of this image (an upper bound on -log2 p(x) / 3072). {estimator}."])
        frames = [pd.concat(parts[key], ignore_index=True) for key in ("terms", "running", "mse")]
        shown = display.labelled(to_pil(x)[0], "x, 32x32", scale=8)
        return shown, *frames, info, loss_code(list(found), self.pipes.tiny, stride_value, seed)


def tab(handlers: LossView) -> dict[str, gr.components.Component]:
    examples = list(display.examples())
    choices = handlers.choices()
    with gr.Tab("Loss", id="loss"):
        gr.Markdown(
            "Where the bound's code length goes: L = L_T + sum L_{t-1} + L_0 (DDPM Eq. 5) of one image under the "
            "same U-Net trained three ways (L_simple, L_hybrid, L_vlb), next to L_simple's unweighted MSE per t. "
            f"The KL terms t < {EXACT_BELOW} are exact; above, the chosen estimator evaluates every k-th term "
            "(each standing for the k - 1 after it) and the last; one draw of x_t per term, fixed by the seed."
        )
        with gr.Row():
            with gr.Column(scale=1):
                names = gr.CheckboxGroup(choices, value=choices, label="pipelines (one objective each)")
                example = gr.Dropdown([UPLOAD, *examples], value=examples[0], label="image: a dataset example")
                upload = gr.Image(type="filepath", sources=["upload"], label="or upload one (picks 'upload')")
                stride = gr.Radio(list(STRIDES), value=next(iter(STRIDES)), label="terms above t = 50")
                seed = number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed of the x_t draws")
                button = gr.Button("Measure the bound", variant="primary", elem_id="measure-loss")
            with gr.Column(scale=2):
                image = gr.Image(label="x as the models see it", type="pil", elem_id="loss-image", **display.IMAGE)
                info = gr.Markdown()
        with gr.Row():
            terms = gr.LinePlot(x="t", y="log10 bits/dim", color="pipeline", title="each term L_{t-1} (L_0 at t = 1)")
            running = gr.LinePlot(
                x="t", y="bits/dim so far", color="pipeline", title="the code length, summed up to t"
            )
            mse = gr.LinePlot(x="t", y="||eps - eps_theta||^2", color="pipeline", title="L_simple's MSE per t")
        code = display.code_box()
    inputs = [names, example, upload, stride, seed]
    button.click(handlers.loss, inputs, [image, terms, running, mse, info, code], api_name="loss")
    upload.upload(lambda: UPLOAD, None, example, api_visibility="private")
    return {"button": button, "image": image, "plots": (terms, running, mse), "info": info, "code": code}
