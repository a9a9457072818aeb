"""Diffusion Zoo's app: see diffusion work, one tab per idea, each tab a module of its own
(layout + handlers), sharing only the pipeline cache (`cache.py`), the mapping of library errors to UI
errors (`guard.py`) and how images are shown (`display.py`). The handlers call pipeline methods for every
formula; the library (`import zoo`) never imports this package or gradio.

    from zoo.app import build_app, launch
    demo = launch()        # serves http://127.0.0.1:7860 and returns the Blocks (a notebook shows it inline)
    demo.close()

Environment: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (127.0.0.1:7860), ZOO_APP_SHARE=1 for a public share link
(Colab needs one; off by default), ZOO_APP_DELETE_CACHE=FREQUENCY,AGE for the file cache's sweep (60,600 s),
and the pipeline cache's settings (zoo/app/cache.py): ZOO_APP_TINY,
ZOO_APP_PIPELINES, ZOO_APP_ALLOW_DOWNLOADS, ZOO_APP_CACHE_MB.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported: set it first

import logging  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from zoo.app import (  # noqa: E402
    autoencoders,
    conditioning,
    display,
    forward_noise,
    guard,
    image_to_image,
    loss,
    samplers,
    steps,
    swap,
    text_to_image,
    zoo_tab,
)
from zoo.app.cache import PipelineCache, flag, limit_heaps  # noqa: E402
from zoo.app.limits import MAX_FILE_SIZE, BodyLimit  # noqa: E402

__all__ = ["PipelineCache", "build_app", "launch", "launch_options", "main"]

logger = logging.getLogger(__name__)

SHARE_ENV = "ZOO_APP_SHARE"
CONCURRENCY_LIMIT = 1  # one sampling run at a time: the models share one device
QUEUE_SIZE = 32
DELETE_CACHE_ENV = "ZOO_APP_DELETE_CACHE"  # "FREQUENCY,AGE" in seconds
DELETE_CACHE = (60, 600)  # every minute, delete the result and upload files older than ten minutes
INTRO = (
    "# Diffusion Zoo\n"
    "DDPM, DDIM and latent diffusion as small interchangeable parts. Draw an image from text, edit or inpaint one, "
    "watch the forward process add noise, switch how the condition enters the U-Net, compare samplers from one "
    "x_T, swap one part under a pinned seed, look inside the autoencoders, and open one sampler step."
)


def build_app(pipes: PipelineCache | None = None) -> gr.Blocks:
    """The whole app over one pipeline cache (PipelineCache.from_env() by default)."""
    pipes = pipes or PipelineCache.from_env()
    noise = forward_noise.ForwardNoise(pipes)
    table = zoo_tab.ZooTable(pipes)
    with gr.Blocks(title="Diffusion Zoo", analytics_enabled=False, delete_cache=delete_cache()) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            drawn = text_to_image.tab(text_to_image.TextToImage(pipes), num_timesteps=noise.num_timesteps)
            image_to_image.tab(
                image_to_image.ImageToImage(pipes), num_timesteps=noise.num_timesteps, generated=drawn["gallery"]
            )
            shown = forward_noise.tab(noise)
            conditioning.tab(conditioning.Conditioning(pipes), num_timesteps=noise.num_timesteps)
            samplers.tab(samplers.SamplerComparison(pipes), num_timesteps=noise.num_timesteps)
            swap.tab(swap.Swap(pipes), num_timesteps=noise.num_timesteps)
            autoencoders.tab(autoencoders.Inspector(pipes))
            steps.tab(steps.OneStep(pipes), num_timesteps=noise.num_timesteps)
            loss.tab(loss.LossView(pipes))
            tables = zoo_tab.tab(table)
        abar, log_snr = shown["plots"]
        demo.load(noise.initial_plots, shown["t"], [abar, log_snr], api_visibility="private")
        demo.load(table.pipelines, None, tables["pipelines"], api_visibility="private")
        demo.load(table.components, None, tables["components"], api_visibility="private")
    guard.bound_image_inputs(demo)  # every tab's image inputs, refused from their header before gradio decodes
    return demo


def delete_cache() -> tuple[int, int]:
    """How often gradio's file cache is swept and how old a file must be to go: ZOO_APP_DELETE_CACHE or 60,600."""
    chosen = os.environ.get(DELETE_CACHE_ENV, "").strip()
    if not chosen:
        return DELETE_CACHE
    try:
        frequency, age = (int(part) for part in chosen.split(","))
    except ValueError as err:
        raise ValueError(f"{DELETE_CACHE_ENV} must be 'FREQUENCY,AGE' in whole seconds, got {chosen!r}") from err
    return frequency, age


def launch_options() -> dict[str, Any]:
    """Safe defaults: local only, no share link unless ZOO_APP_SHARE=1, bounded uploads and request bodies, errors
    shown with their message, no extra served paths, no monitoring."""
    return {
        "server_name": os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        "server_port": int(port)
        if (port := os.environ.get("GRADIO_SERVER_PORT"))
        else None,  # None: 7860 or next free
        "share": flag(SHARE_ENV),
        "show_error": True,
        "css": display.CSS,
        "max_file_size": MAX_FILE_SIZE,
        "allowed_paths": [],
        "enable_monitoring": False,
        "ssr_mode": False,
        "mcp_server": False,
        "app_kwargs": {"middleware": [Middleware(BodyLimit)]},
        # open a browser tab for a person at a terminal; never under tests, CI or a Space (no terminal there)
        "inbrowser": sys.stdout.isatty() and os.environ.get("CI") is None,
    }


def launch(pipes: PipelineCache | None = None, *, block: bool = False, **overrides: Any) -> gr.Blocks:
    """Build, queue and serve the app; returns the Blocks at once (call .close() on it), or with `block` only
    when the server stops (`python app.py`). In a notebook the app shows inline."""
    limit_heaps()  # before the server's threads start (zoo/app/cache.py)
    pipes = pipes or PipelineCache.from_env()
    pipes.preload()  # the default pipeline loads while the server starts; no example is computed
    demo = build_app(pipes)
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE)
    demo.launch(**{**launch_options(), "prevent_thread_lock": not block, **overrides})
    return demo


def main() -> gr.Blocks:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return launch(block=True)
