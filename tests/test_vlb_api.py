"""`pipe.vlb(images)`: the bound of DDPM Eq. 5 term by term in bits/dim, its estimator, and every refusal."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from components.schedulers.losses import bits_per_dim, strided_timesteps
from zoo.build import IncompatiblePartsError
from zoo.data.shapes import Attributes, render


def tiny(name: str) -> zoo.pipelines.pixel.PixelPipeline:
    """A tiny pipeline with perturbed weights (its output layers start at zero, which would hide the input)."""
    torch.manual_seed(0)
    pipe = zoo.build(name, tiny=True, device="cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return pipe


def shape_image(size: int = 32, colour: str = "red") -> Image.Image:
    return Image.fromarray(render(Attributes("circle", colour, "blue", "large", "center"), image_size=size)[0])


def test_vlb_is_the_sum_of_its_terms_and_equals_bits_per_dim():
    pipe = tiny("ddpm-hybrid-32")
    T = pipe.num_timesteps
    result = pipe.vlb([shape_image(), shape_image(colour="green")], seed=3)
    assert result.kl.shape == (2, T - 1) and result.mse.shape == (2, T - 1) and result.decoder.shape == (2,)
    assert result.timesteps.tolist() == list(range(1, T)) and (result.weights == 1).all()
    assert result.estimator.startswith("exact")
    torch.testing.assert_close(result.total, result.prior + result.kl.sum(1) + result.decoder)
    x0 = torch.cat([pipe_input(shape_image()), pipe_input(shape_image(colour="green"))])
    model = lambda x_t, t: pipe.unet(x_t, t)  # noqa: E731
    options = {"model_variance": pipe.recipe.variance, "clip_x0": True}  # pipe.vlb measures the model that samples
    expected = bits_per_dim(model, x0, pipe.schedule, generator=torch.Generator().manual_seed(3), **options)
    torch.testing.assert_close(result.total, expected.float())
    assert (result.kl >= 0).all() and (result.decoder > 0).all() and (result.prior >= 0).all()
    json.dumps(result.to_dict())  # plain lists for the app
    again = pipe.vlb([shape_image(), shape_image(colour="green")], seed=3)
    torch.testing.assert_close(again.total, result.total)


def pipe_input(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1


def test_the_learned_variance_enters_the_bound():
    pipe = tiny("ddpm-hybrid-32")
    learned = pipe.vlb(shape_image(), seed=0)
    with torch.no_grad():  # v = -1 in every pixel: Sigma = beta tilde, the fixed_small bound of the same means
        bias = pipe.unet.conv_out.bias
        bias[3:] = -1.0
        pipe.unet.conv_out.weight[3:] = 0.0
    pinned = pipe.vlb(shape_image(), seed=0)
    model = lambda x_t, t: pipe.unet(x_t, t)[:, :3]  # noqa: E731
    generator = torch.Generator().manual_seed(0)
    small = bits_per_dim(model, pipe_input(shape_image()), pipe.schedule, generator=generator, clip_x0=True)
    torch.testing.assert_close(pinned.total, small.float())
    assert not torch.allclose(learned.total, pinned.total)


def test_the_strided_estimate_stands_each_term_for_its_stride():
    timesteps, weights = strided_timesteps(100, stride=10, exact_below=20)
    assert timesteps.tolist() == [*range(1, 20), *range(20, 100, 10), 99]  # the last term always evaluated
    assert weights.sum() == 99 and (weights[:19] == 1).all() and (weights[19:-2] == 10).all()
    assert weights[-2:].tolist() == [9, 1]  # 90 stands for 90 .. 98, 99 for itself
    ends, last = strided_timesteps(95, stride=10, exact_below=20)
    assert last.sum() == 94 and last[-2:].tolist() == [4, 1] and ends[-1] == 94
    pipe = tiny("ddpm-vlb-32")  # T = 50
    strided = pipe.vlb(shape_image(), stride=7, exact_below=10, seed=0)
    assert strided.timesteps.tolist() == [*range(1, 10), 10, 17, 24, 31, 38, 45, 49] and "strided" in strided.estimator
    torch.testing.assert_close(
        strided.total, strided.prior + (strided.kl * strided.weights.float()).sum(1) + strided.decoder
    )


def test_batched_timesteps_draw_the_same_x_t_as_one_call_per_timestep():
    pipe = tiny("ddpm-hybrid-32")
    images = [shape_image(), shape_image(colour="green")]
    one = pipe.vlb(images, stride=3, seed=2, batch=1)
    for batch in (2, 7, 1000):  # 1 timestep per call, 3 per call (2 images), all at once
        many = pipe.vlb(images, stride=3, seed=2, batch=batch)
        torch.testing.assert_close(many.kl, one.kl, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(many.mse, one.mse, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(many.total, one.total, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch must be"):
        pipe.vlb(images, batch=0)


def test_clipping_x0_bounds_the_model_that_samples_and_tames_the_last_term():
    """Unclipped, the cosine schedule's last step (beta clipped to 0.999: the mean's error weighted by 1 / alpha_t)
    costs far more than clipped; no KL term costs more clipped (to float rounding: clipping moves each pixel of
    x0_hat towards the true x0 in [-1, 1], the posterior mean is linear in it, and the variance does not move)."""
    pipe = tiny("ddpm-simple-32")
    clipped = pipe.vlb(shape_image(), stride=5, seed=0)
    raw = pipe.vlb(shape_image(), stride=5, seed=0, clip_x0=False)
    assert "clipped" in clipped.estimator and "clipped" not in raw.estimator
    assert raw.kl[0, -1] > 10 * clipped.kl[0, -1]
    assert (clipped.kl <= raw.kl + 1e-5).all() and clipped.total < raw.total
    torch.testing.assert_close(clipped.prior, raw.prior)


def test_vlb_takes_uint8_arrays_and_bin_valued_tensors():
    pipe = tiny("ddpm-simple-32")
    image = shape_image()
    from_pil = pipe.vlb(image, stride=10).total
    torch.testing.assert_close(pipe.vlb(np.asarray(image), stride=10).total, from_pil)
    torch.testing.assert_close(pipe.vlb(pipe_input(image)[0], stride=10).total, from_pil)


# Refusals.
@pytest.mark.parametrize(
    "image, message",
    [
        (shape_image(64), "is 64x64; this pipeline's bound is of 32x32 images"),
        (shape_image().convert("L"), "has mode 'L': the bound is of 8-bit RGB images"),
        (shape_image().convert("RGBA"), "has mode 'RGBA'"),
        (torch.full((3, 32, 32), 0.5), "off the 256 bins"),
        (torch.full((3, 32, 32), 1.5), r"got values in \[1.5, 1.5\]"),
        (np.zeros((32, 32, 3), dtype=np.float32), "an array must be uint8 HxWx3"),
        ([], "at least one image"),
    ],
)
def test_vlb_refuses_images_it_cannot_measure(image, message):
    with pytest.raises(ValueError, match=message):
        tiny("ddpm-simple-32").vlb(image)


def test_vlb_refuses_latent_pipelines_and_says_why():
    with pytest.raises(ValueError, match=r"latent pipeline: .* bound -log p\(z\) of the autoencoder's"):
        zoo.build("ldm-clip-kl", tiny=True, device="cpu").vlb(shape_image(64))


def test_vlb_and_hybrid_need_a_learned_variance_and_its_channels():
    with pytest.raises(ValueError, match="recipe 'ddpm-vlb-32': objective 'vlb' .* needs variance 'learned'"):
        zoo.recipe("ddpm-vlb-32").replace(variance="fixed_small")
    with pytest.raises(ValueError, match="recipe 'ddpm-cosine': objective 'hybrid' .* needs variance 'learned'"):
        zoo.build("ddpm-cosine", tiny=True, objective="hybrid")
    with pytest.raises(ValueError, match="would get no gradient"):
        zoo.recipe("ddpm-simple-32").replace(variance="learned")
    with warnings.catch_warnings(), pytest.raises(IncompatiblePartsError, match="needs a U-Net with out_channels=6"):
        warnings.simplefilter("ignore")
        zoo.build("ddpm-hybrid-32", tiny=True, unet={"out_channels": 3})


def test_bits_per_dim_of_an_untrained_model_is_finite_and_large():
    """An untrained U-Net (zero output: eps_hat = 0, v = 0) still gives a finite bound, far above 8 bits/dim."""
    pipe = zoo.build("ddpm-hybrid-32", tiny=True, device="cpu")
    total = pipe.vlb(shape_image(), stride=5).total
    assert torch.isfinite(total).all() and total.item() > 8


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stride": 0}, "stride must be a positive integer, got 0"),
        ({"stride": 2.5}, "stride must be a positive integer, got 2.5"),
        ({"exact_below": True}, "exact_below must be a positive integer, got True"),
        ({"seed": -1}, "seed must be an integer in"),
        ({"batch": 1.5}, "batch must be an integer"),
    ],
)
def test_vlb_refuses_bad_estimator_options(options, message):
    with pytest.raises(ValueError, match=message):
        tiny("ddpm-simple-32").vlb(shape_image(), **options)
