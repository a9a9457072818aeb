"""The autoencoder inspector: one image through each offered autoencoder (KL, VQ): the reconstruction D(E(x)),
each latent channel of z = scaling_factor * E(x), the PSNR of the round trip, and for VQ the codes it used."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

import zoo
from components.autoencoders.vq import VQAutoencoder
from zoo.app import display
from zoo.app.cache import PipelineCache
from zoo.app.forward_noise import UPLOAD, source_image
from zoo.app.guard import check_choice, handler, on_gpu
from zoo.build import embedded_weights
from zoo.pipelines.base import Pipeline, to_pil, to_tensor
from zoo.train.stages import psnr


def codebook_usage(pipe: Pipeline, z: Any) -> str:
    """Codes used by this image and the codebook's perplexity on it (VQ only: the quantizer's own statistics)."""
    if not isinstance(pipe.autoencoder, VQAutoencoder):
        return "-"
    _, indices, stats = pipe.autoencoder.quantize(z / pipe.autoencoder.scaling_factor)
    size = pipe.autoencoder.config.num_embeddings
    return f"{int(indices.unique().numel())} of {size} codes (perplexity {float(stats['perplexity']):.1f})"


class Inspector:
    """The view's handler over the app's pipeline cache."""

    def __init__(self, pipes: PipelineCache):
        self.pipes = pipes

    def autoencoders(self) -> dict[str, str]:
        """One offered latent pipeline per distinct autoencoder, one with embedded weights where there is one:
        {"kl-f4 (ldm-clip-kl)": "ldm-clip-kl", ...}."""
        found: dict[str, str] = {}
        for name in sorted(self.pipes.names(), key=lambda n: embedded_weights(n) is None):  # stable: trained first
            recipe = zoo.recipe(name)
            if recipe.kind == "latent" and recipe.autoencoder not in [
                zoo.recipe(n).autoencoder for n in found.values()
            ]:
                found[f"{recipe.autoencoder.name} ({name})"] = name
        return found

    @handler
    @on_gpu
    def inspect(self, example: str, upload: Any) -> tuple[list[tuple[Image.Image, str]], str]:
        """The image, each reconstruction and each latent, captioned; PSNR and codebook use as a table."""
        image = source_image(example, upload)
        shown = [(to_pil(to_tensor(image, 64))[0], "x (the input, as the autoencoders see it)")]
        rows = ["| autoencoder | latent | PSNR (dB) | codebook |", "|---|---|---|---|"]
        for label, name in self.autoencoders().items():
            pipe = self.pipes.get(check_choice("pipeline", name, self.pipes.names()))
            z = pipe.encode(image)
            reconstruction = pipe.decode(z)[0]
            size = pipe.recipe.image_size
            db = psnr(to_tensor(reconstruction, size), to_tensor(image, size))
            shown.append((reconstruction, f"D(E(x)), {label}: {db:.1f} dB"))
            shown.append((display.channels_image(z[0]), f"z = E(x), {label}: {'x'.join(map(str, z.shape[1:]))}"))
            untrained = "" if pipe.pretrained else " (random weights)"
            rows.append(
                f"| {label}{untrained} | {'x'.join(map(str, z.shape[1:]))} | {db:.2f} | {codebook_usage(pipe, z)} |"
            )
        return shown, "\n".join(rows)


def tab(handlers: Inspector) -> dict[str, gr.components.Component]:
    examples = list(display.examples())
    with gr.Tab("Autoencoders", id="autoencoders"):
        with gr.Row():
            with gr.Column(scale=1):
                example = gr.Dropdown([UPLOAD, *examples], value=examples[0], label="image: a dataset example")
                upload = gr.Image(type="filepath", sources=["upload"], label="or upload one (picks 'upload')")
                button = gr.Button("Encode and decode", variant="primary", elem_id="inspect-autoencoders")
            with gr.Column(scale=3):
                gallery = gr.Gallery(
                    label="x | reconstruction | latent channels, per autoencoder",
                    columns=3,
                    elem_id="autoencoder-images",
                    **display.GALLERY,
                )
                info = gr.Markdown()
    button.click(handlers.inspect, [example, upload], [gallery, info], api_name="inspect_autoencoders")
    upload.upload(lambda: UPLOAD, None, example, api_visibility="private")
    return {"button": button, "gallery": gallery, "info": info}
