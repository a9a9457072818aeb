"""Diffusion Zoo's app: see diffusion work, one tab per idea. `python app.py` serves it on 127.0.0.1:7860.

This file only wires widgets to functions: one builder per tab, each taking its inference function(s), so a
tab can be built and tested without a server. The functions live in zoo/service.py.

Environment: GRADIO_SERVER_NAME (default 127.0.0.1), GRADIO_SERVER_PORT (default 7860), and ZOO_APP_TINY=1
for tiny random pipelines (tests).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: set it first

import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

import gradio as gr  # noqa: E402

from zoo import service as zs  # noqa: E402

logger = logging.getLogger(__name__)

MAX_FILE_SIZE = "5mb"
CONCURRENCY_LIMIT = 1  # one sampling run at a time: the models share one device
QUEUE_SIZE = 32
INTRO = (
    "# Diffusion Zoo\n"
    "DDPM, DDIM and latent diffusion as small interchangeable parts. Draw an image from text, watch the forward "
    "process add noise, and switch how the condition enters the U-Net."
)


def code_box(label: str = "show as code") -> gr.Code:
    with gr.Accordion(label, open=False):
        return gr.Code(language="python", label="the call that reproduces this result", interactive=False)


def text_to_image_tab(
    generate_fn: Callable,
    *,
    names_fn: Callable[[bool], Sequence[str]],
    defaults_fn: Callable[[str], tuple[str, int, float]],
    num_timesteps: int = 1000,
) -> dict[str, gr.components.Component]:
    """Prompt -> images, with the denoising trajectory (x_t and predicted x_0) to scrub through."""
    names = list(names_fn(False))
    sampler_name, steps, guidance = defaults_fn(names[0])  # the recipe's own settings: one click, a good image
    with gr.Tab("Text to image", id="text-to-image"):
        with gr.Row():
            with gr.Column():
                pipeline = gr.Dropdown(names, value=names[0], label="pipeline", allow_custom_value=True)
                every = gr.Checkbox(False, label="offer every registered pipeline (most are not trained)")
                prompt = gr.Textbox("a red circle on a blue background", label="prompt", max_lines=2)
                negative = gr.Textbox("", label="negative prompt", max_lines=1)
                sampler = gr.Radio(list(zs.SAMPLER_CHOICES), value=sampler_name, label="sampler")
                steps_box = gr.Slider(1, num_timesteps, value=steps, step=1, label="steps (1 to T)")
                guidance_box = gr.Slider(0, zs.MAX_GUIDANCE, value=guidance, step=0.5, label="guidance scale w")
                with gr.Row():
                    seed = gr.Number(0, precision=0, minimum=0, label="seed")
                    randomize = gr.Checkbox(False, label="randomise seed")
                num_images = gr.Slider(1, zs.MAX_UI_IMAGES, value=1, step=1, label="number of images")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gallery = gr.Gallery(label="images", format="png", columns=2, elem_id="images")
                info = gr.Markdown(elem_id="generate-info")
                trajectory = gr.Gallery(
                    label="trajectory: x_t | predicted x_0", format="png", columns=2, object_fit="contain"
                )
                scrub = gr.Slider(1, zs.TRAJECTORY_FRAMES, value=1, step=1, label="scrub the trajectory")
                code = code_box()
    inputs = [pipeline, prompt, negative, sampler, steps_box, guidance_box, seed, randomize, num_images]
    button.click(generate_fn, inputs, [gallery, trajectory, info, code, seed], api_name="generate")
    scrub.change(lambda i: gr.Gallery(selected_index=int(i) - 1), scrub, trajectory, api_visibility="private")
    every.change(lambda on: gr.Dropdown(choices=list(names_fn(on))), every, pipeline, api_visibility="private")
    pipeline.change(defaults_fn, pipeline, [sampler, steps_box, guidance_box], api_visibility="private")
    return {"button": button, "gallery": gallery, "trajectory": trajectory, "info": info, "code": code}


def forward_noise_tab(
    noise_fn: Callable, *, examples: Sequence[str], num_timesteps: int
) -> dict[str, gr.components.Component]:
    """x_t from the closed form q(x_t | x_0), the schedules side by side, abar_t and log-SNR plotted."""
    with gr.Tab("Forward noise", id="forward-noise"):
        with gr.Row():
            with gr.Column():
                example = gr.Dropdown([zs.UPLOAD, *examples], value=examples[0], label="image: a dataset example")
                upload = gr.Image(type="pil", sources=["upload"], image_mode=None, label="or upload one")
                t = gr.Slider(0, num_timesteps, value=num_timesteps // 4, step=1, label="t (0 = the image, T = noise)")
                schedule = gr.Radio(list(zs.SCHEDULE_CHOICES), value="linear", label="schedule")
                space = gr.Radio(list(zs.SPACE_CHOICES), value="pixel", label="space (latent: encode, noise, decode)")
                seed = gr.Number(0, precision=0, minimum=0, label="seed of eps")
                button = gr.Button("Add noise", variant="primary")
            with gr.Column():
                x_t = gr.Image(label="x_t", format="png", type="pil", interactive=False, height=256)
                formula = gr.Markdown()
                strip = gr.Image(label="x_t across t: linear (top) and cosine (bottom)", format="png", type="pil")
        with gr.Row():
            abar = gr.LinePlot(x="t", y="value", color="schedule", title="abar_t", y_title="abar_t")
            log_snr = gr.LinePlot(x="t", y="value", color="schedule", title="log-SNR(t)", y_title="log SNR")
        code = code_box()
    inputs = [example, upload, t, schedule, space, seed]
    outputs = [x_t, strip, abar, log_snr, formula, code]
    button.click(noise_fn, inputs, outputs, api_name="forward_noise")
    t.release(noise_fn, inputs, outputs, api_visibility="private")
    return {"button": button, "x_t": x_t, "strip": strip, "formula": formula, "code": code}


def conditioning_tab(
    switch_fn: Callable,
    switch_all_fn: Callable,
    *,
    conditions: Sequence[str],
    map_examples: Sequence[str],
    palette: dict[int, tuple[int, int, int]],
    num_timesteps: int = 1000,
) -> dict[str, gr.components.Component]:
    """The same seed (the same x_T), one click changes the path the condition takes into the U-Net."""
    colours = ["#{:02x}{:02x}{:02x}".format(*rgb) for rgb in palette.values()]
    with gr.Tab("Conditioning switch", id="conditioning"):
        with gr.Row():
            with gr.Column():
                condition = gr.Radio(list(conditions), value=conditions[0], label="conditioning")
                prompt = gr.Textbox("a red circle on a blue background", label="prompt (text paths)", max_lines=2)
                map_source = gr.Dropdown([zs.DRAWN, *map_examples], value=map_examples[0], label="semantic map")
                sketch = gr.Sketchpad(
                    type="numpy",
                    image_mode="RGBA",
                    format="png",
                    canvas_size=(256, 256),
                    label="draw a map",
                    brush=gr.Brush(colors=colours[1:], default_color=colours[1], color_mode="fixed", default_size=24),
                )
                gr.Markdown("Colours: red = circle, green = square, blue = triangle; white/empty = background.")
                with gr.Row():
                    seed = gr.Number(0, precision=0, minimum=0, label="seed")
                    steps = gr.Slider(1, num_timesteps, value=min(25, num_timesteps), step=1, label="steps")
                with gr.Row():
                    button = gr.Button("Generate", variant="primary")
                    compare = gr.Button("Compare all four")
            with gr.Column():
                image = gr.Image(label="result", format="png", type="pil", interactive=False, height=256)
                used_map = gr.Image(label="the map the server used (snapped to the palette)", format="png")
                path = gr.Markdown()
                side_by_side = gr.Gallery(label="every path, same seed", format="png", columns=4)
                summary = gr.Markdown()
                code = code_box()
    inputs = [condition, prompt, map_source, sketch, seed, steps]
    button.click(switch_fn, inputs, [image, used_map, path, code], api_name="switch")
    condition.change(switch_fn, inputs, [image, used_map, path, code], api_visibility="private")
    compare.click(switch_all_fn, inputs[1:], [side_by_side, summary], api_name="switch_all")
    return {"button": button, "compare": compare, "image": image, "path": path, "gallery": side_by_side}


def zoo_tab(
    table_fn: Callable[[bool], object], components_fn: Callable[[], object]
) -> dict[str, gr.components.Component]:
    """Every pipeline and component: parameters, latent shape, weights, evaluation figures (built on demand)."""
    with gr.Tab("Zoo", id="zoo") as tab:
        every = gr.Checkbox(False, label="every registered pipeline, not only the shipped ones")
        button = gr.Button("Show the zoo")
        pipelines = gr.Dataframe(label="pipelines", interactive=False, wrap=True)
        components = gr.Dataframe(label="registered components", interactive=False, wrap=True)
    button.click(table_fn, every, pipelines, api_name="zoo_table")
    button.click(components_fn, None, components, api_name="components")
    tab.select(table_fn, every, pipelines, api_visibility="private")
    tab.select(components_fn, None, components, api_visibility="private")
    return {"button": button, "pipelines": pipelines, "components": components}


def build_app(service: zs.ZooService | None = None) -> gr.Blocks:
    """The whole app; `service` defaults to ZooService.from_env() (tiny pipelines when ZOO_APP_TINY=1)."""
    service = service or zs.ZooService.from_env()
    with gr.Blocks(title="Diffusion Zoo", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            text_to_image_tab(
                service.generate,
                names_fn=service.names,
                defaults_fn=service.defaults,
                num_timesteps=service.num_timesteps,
            )
            forward_noise_tab(service.forward_noise, examples=list(zs.examples()), num_timesteps=service.num_timesteps)
            conditioning_tab(
                service.switch,
                service.switch_all,
                conditions=list(zs.SWITCH),
                map_examples=list(zs.examples()),
                palette=zs.shapes.SEG_PALETTE,
                num_timesteps=service.num_timesteps,
            )
            zoo_tab(service.zoo_table, service.components_table)
    return demo


def launch_options() -> dict[str, object]:
    """Safe defaults: local only, no share link, bounded uploads, no extra served paths, no monitoring."""
    return {
        "server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        "server_port": int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        "share": False,
        "max_file_size": MAX_FILE_SIZE,
        "allowed_paths": [],
        "enable_monitoring": False,
        "ssr_mode": False,
        "mcp_server": False,
        # open a browser tab for a person at a terminal; never under tests, CI or a Space (no terminal there)
        "inbrowser": sys.stdout.isatty() and os.environ.get("CI") is None,
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    service = zs.ZooService.from_env()
    service.preload()  # the default pipeline loads while the server starts; no example is computed
    demo = build_app(service)
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE)
    demo.launch(**launch_options())


if __name__ == "__main__":
    main()
