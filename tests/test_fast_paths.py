"""The speed work of issue 9 changes how the U-Net and the pipelines compute, never what: each optimisation is
checked against the computation it replaced, written out here as it was (tiny configs, fixed seeds, 1 thread).

- the cross-attention mask, prepared once per U-Net forward (`cross_mask`) instead of in every transformer;
- heads split and tokens flattened with view / transpose instead of einops' rearrange;
- the sampling loop and the decoder under torch.inference_mode instead of torch.no_grad;
- the opt-in traced U-Net (`enable_traced_unet`): the U-Net's own outputs, whatever its weights;
- the opt-in compiled U-Net (`enable_compiled_unet`, TorchInductor): the same, to float rounding (each compile
  takes tens of seconds on 2 cores, so two tests compile, once each).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import zoo
from components.unets import blocks
from components.unets import traced as traced_module
from components.unets.blocks import Attention, SpatialTransformer, TransformerBlock
from components.unets.compiled import CompiledUNet
from components.unets.traced import TracedUNet
from components.unets.unet import TINY, UNet, UNetConfig
from zoo.pipelines.base import Pipeline

TINY_LDM = UNetConfig(**{**TINY, "in_channels": 4, "out_channels": 4, "context_dim": 12})


# The computation before the speed work (HEAD of main at 3ed63c9), as it was written.
def previous_attention(self, x, context=None, key_mask=None):
    source = x if context is None else context
    q, k, v = (
        rearrange(proj(inp), "b n (h d) -> b h n d", h=self.heads)
        for proj, inp in ((self.to_q, x), (self.to_k, source), (self.to_v, source))
    )
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


def previous_cross_attend(self, x, context, key_mask):
    if key_mask is None or bool(key_mask.all()):
        return self.attn2(x, context)
    has_token = key_mask.any(dim=-1)
    out = self.attn2(x, context, key_mask | ~has_token[:, None])
    return out * has_token[:, None, None].to(out.dtype)


def previous_spatial_transformer(self, x, context=None, key_mask=None):
    _, _, height, width = x.shape
    h = self.norm(x)
    if not self.linear_proj:
        h = self.proj_in(h)
    h = rearrange(h, "b c h w -> b (h w) c")
    if self.linear_proj:
        h = self.proj_in(h)
    for block in self.blocks:
        h = block(h, context, key_mask)
    if self.linear_proj:
        h = self.proj_out(h)
    h = rearrange(h, "b (h w) c -> b c h w", h=height, w=width)
    if not self.linear_proj:
        h = self.proj_out(h)
    return x + h


def previous_check_mask(context_mask, context):
    if context_mask is None:
        return None
    mask = context_mask.to(device=context.device, dtype=torch.bool)
    return None if bool(mask.all()) else mask


@pytest.fixture
def previous(monkeypatch):
    """Install the previous computation; the U-Net then runs exactly as before the speed work."""

    def install() -> None:
        monkeypatch.setattr(Attention, "forward", previous_attention)
        monkeypatch.setattr(TransformerBlock, "cross_attend", previous_cross_attend)
        monkeypatch.setattr(SpatialTransformer, "forward", previous_spatial_transformer)
        monkeypatch.setattr("components.unets.unet.cross_mask", lambda mask: mask)
        monkeypatch.setattr("components.unets.unet._check_mask", previous_check_mask)

    return install


def randomized(model: UNet) -> UNet:
    """Random weights in the zero-initialised layers too, so every path shows in the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.2)
    return model.eval()


MASKS = {
    "none": None,
    "all-real": torch.ones(3, 5, dtype=torch.bool),
    "padded": torch.tensor([[True, True, False, False, False], [True] * 5, [True, False, False, False, False]]),
    "one-empty-row": torch.tensor([[False] * 5, [True, True, True, False, False], [True] * 5]),
}


@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
@pytest.mark.parametrize(
    "changes", [{}, {"use_linear_projection": True, "transformer_depth": 2}], ids=["conv", "linear"]
)
def test_the_unet_computes_what_it_computed_before_the_speed_work(previous, mask, changes):
    torch.set_num_threads(1)
    model = randomized(UNet(TINY_LDM.replace(**changes)))
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(3, 4, 8, 8, generator=generator)
    t = torch.tensor([0, 500, 999])
    context = torch.randn(3, 5, 12, generator=generator)
    with torch.no_grad():
        now = model(x_t, t, context, context_mask=mask)
        previous()
        before = model(x_t, t, context, context_mask=mask)
    assert before.abs().max() > 1e-2  # a live network: the comparison is not vacuous
    torch.testing.assert_close(now, before, rtol=0, atol=1e-6)


def test_cross_mask_is_none_when_nothing_is_masked_and_zeroes_only_empty_rows():
    assert blocks.cross_mask(None) is None and blocks.cross_mask(torch.ones(2, 3, dtype=torch.bool)) is None
    padded = blocks.cross_mask(torch.tensor([[True, False], [True, True]]))
    assert padded.has_token is None and padded.attend.shape == (2, 1, 1, 2)
    assert padded.attend[:, 0, 0].tolist() == [[True, False], [True, True]]
    empty = blocks.cross_mask(torch.tensor([[False, False], [True, False]]))
    assert empty.attend[:, 0, 0].tolist() == [[True, True], [True, False]]  # the empty row attends (then zeroed)
    assert empty.has_token.flatten().tolist() == [False, True]


@pytest.fixture(scope="module")
def tiny_latent():
    return zoo.build("ldm-clip-kl", tiny=True, device="cpu")


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp"])
def test_sampling_under_inference_mode_draws_what_no_grad_drew(tiny_latent, monkeypatch, sampler):
    torch.set_num_threads(1)
    first = tiny_latent.generate("a red circle", sampler=sampler, steps=3, seed=7)[0]
    no_grad_draw = torch.no_grad()(Pipeline.draw.__wrapped__)  # the decorator it had before
    monkeypatch.setattr(Pipeline, "draw", no_grad_draw)
    monkeypatch.setattr(type(tiny_latent), "decode", torch.no_grad()(type(tiny_latent).decode.__wrapped__))
    second = tiny_latent.generate("a red circle", sampler=sampler, steps=3, seed=7)[0]
    assert first.tobytes() == second.tobytes()
    assert len(set(first.getdata())) > 1  # not a flat image: the comparison is not vacuous


def test_profile_bench_times_the_unet_call_the_sampler_makes_and_its_layer_kinds():
    from zoo import bench

    torch.set_num_threads(1)
    result = bench.main(["profile", "--repeats", "1"])
    assert result.batch == 2  # classifier-free guidance batches both branches into one U-Net call
    assert result.forward_s > 0 and result.layers["conv 3x3"] > 0 and result.layers["linear"] > 0
    assert {kind: calls for kind, (_, calls) in result.kinds.items()} == result.layers  # each layer once a forward
    assert sum(s for s, _ in result.kinds.values()) <= result.hooked_s


# --- the traced U-Net (components/unets/traced.py) ------------------------------------------------------------


def traced_inputs(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    x_t = torch.randn(batch, 4, 8, 8, generator=generator)
    return x_t, torch.randint(0, 1000, (batch,), generator=generator), torch.randn(batch, 5, 12, generator=generator)


@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
def test_the_traced_unet_computes_what_the_unet_computes_and_traces_once_per_signature(mask):
    torch.set_num_threads(1)
    model = randomized(UNet(TINY_LDM))
    traced = TracedUNet(model)
    x_t, t, context = traced_inputs()
    with torch.inference_mode():
        eager = model(x_t, t, context, context_mask=mask)
        for _ in range(2):  # the second call replays the first one's graph
            torch.testing.assert_close(traced(x_t, t, context, context_mask=mask), eager, rtol=0, atol=1e-6)
        assert len(traced.graphs) == 1
        other = traced_inputs(batch=2)  # another batch size: a graph of its own, the same outputs as eager
        got = traced(*other, context_mask=None if mask is None else mask[:2])
        torch.testing.assert_close(
            got, model(*other, context_mask=None if mask is None else mask[:2]), rtol=0, atol=1e-6
        )
        assert len(traced.graphs) == 2


def test_the_traced_unet_takes_concat_and_class_labels_and_a_scalar_t():
    torch.set_num_threads(1)
    model = randomized(UNet(TINY_LDM.replace(concat_channels=2, num_classes=3, context_dim=None)))
    traced = TracedUNet(model)
    x_t, _, _ = traced_inputs()
    inputs = {"concat": torch.randn(3, 2, 8, 8), "class_labels": torch.tensor([0, 2, 1])}
    with torch.inference_mode():
        torch.testing.assert_close(traced(x_t, 250, **inputs), model(x_t, 250, **inputs), rtol=0, atol=1e-6)


def test_the_traced_unet_uses_new_weights_and_runs_eager_with_gradients_or_in_training():
    torch.set_num_threads(1)
    model = randomized(UNet(TINY_LDM))
    traced = TracedUNet(model)
    x_t, t, context = traced_inputs()
    with torch.inference_mode():
        before = traced(x_t, t, context)
    torch.manual_seed(5)
    model.load_state_dict({k: torch.randn_like(v) * 0.1 for k, v in model.state_dict().items()})
    with torch.inference_mode():
        after = traced(x_t, t, context)
        torch.testing.assert_close(after, model(x_t, t, context), rtol=0, atol=1e-6)
    assert (after - before).abs().max() > 1e-3 and len(traced.graphs) == 1  # the same graph, the new weights
    out = traced(x_t, t, context)  # gradients on: the eager forward, differentiable, nothing traced
    assert out.requires_grad and len(traced.graphs) == 1
    model.train()
    with torch.no_grad():
        traced(traced_inputs(batch=2)[0], 0)
    assert len(traced.graphs) == 1


def test_the_traced_unet_still_validates_every_call_and_refuses_what_is_not_a_unet():
    traced = TracedUNet(randomized(UNet(TINY_LDM)))
    with torch.inference_mode(), pytest.raises(ValueError, match=r"x_t must have shape \(B, 4, H, W\)"):
        traced(torch.randn(1, 3, 8, 8), 0)
    assert not traced.graphs
    with pytest.raises(TypeError, match="TracedUNet takes a UNet, got Linear"):
        TracedUNet(torch.nn.Linear(2, 2))


def test_the_traced_unet_keeps_a_bounded_number_of_graphs(monkeypatch):
    monkeypatch.setattr(traced_module, "MAX_SIGNATURES", 2)
    traced = TracedUNet(randomized(UNet(TINY_LDM)))
    with torch.inference_mode():
        for batch in (1, 2, 3):
            traced(traced_inputs(batch)[0], 0)
    assert [key[1][0][0] for key in traced.graphs] == [2, 3]  # the least recently used (batch 1) went


def test_a_pipeline_samples_the_same_images_through_the_traced_unet(tiny_latent):
    torch.set_num_threads(1)
    plain = tiny_latent.generate("a red circle", steps=3, seed=3, num_images=2)
    traced = copy.deepcopy(tiny_latent).enable_traced_unet()  # the same weights, whatever ran before
    assert [i.tobytes() for i in traced.generate("a red circle", steps=3, seed=3, num_images=2)] == [
        i.tobytes() for i in plain
    ]
    assert len(traced.fast_unet.graphs) == 1  # batch 4 (2 images x guidance), traced once for the 3 steps
    with pytest.raises(ValueError, match="model CPU offload needs the eager U-Net"):
        traced.enable_model_cpu_offload("cpu")


def test_threads_sharing_a_traced_unet_trace_each_signature_once_and_get_the_eager_outputs(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    torch.set_num_threads(1)
    model = randomized(UNet(TINY_LDM))
    traced = TracedUNet(model)
    traces = []
    original = traced.trace
    monkeypatch.setattr(traced, "trace", lambda *a: traces.append(1) or original(*a))
    x_t, t, context = traced_inputs()
    with torch.inference_mode():
        eager = model(x_t, t, context)

    def call(_):
        with torch.inference_mode():
            return traced(x_t, t, context)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(12)))
    assert len(traces) == 1  # without the lock, threads arriving together each traced the same signature
    for got in results:
        torch.testing.assert_close(got, eager, rtol=0, atol=1e-6)


# --- the compiled U-Net (components/unets/compiled.py) ---------------------------------------------------------


def test_the_compiled_unet_computes_what_the_unet_computes_with_its_new_weights_and_runs_eager_for_training():
    torch.set_num_threads(1)
    model = randomized(UNet(TINY_LDM))
    compiled = CompiledUNet(model)
    calls = []
    inner = compiled.compiled
    compiled.compiled = lambda inputs: calls.append(1) or inner(inputs)
    x_t, t, context = traced_inputs()
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True] * 3 + [False] * 2])
    with torch.inference_mode():
        torch.testing.assert_close(
            compiled(x_t, t, context, context_mask=mask), model(x_t, t, context, context_mask=mask), rtol=0, atol=1e-5
        )
        before = compiled(x_t, t, context, context_mask=mask)
    torch.manual_seed(5)
    model.load_state_dict({k: torch.randn_like(v) * 0.1 for k, v in model.state_dict().items()})
    with torch.inference_mode():  # the same signature: no new compile, the new weights
        after = compiled(x_t, t, context, context_mask=mask)
        torch.testing.assert_close(after, model(x_t, t, context, context_mask=mask), rtol=0, atol=1e-5)
    assert (after - before).abs().max() > 1e-3 and len(calls) == 3
    assert compiled(x_t, t, context).requires_grad and len(calls) == 3  # gradients on: the eager forward
    model.train()
    with torch.no_grad():
        compiled(x_t, t, context)
    assert len(calls) == 3
    with torch.inference_mode(), pytest.raises(ValueError, match=r"x_t must have shape \(B, 4, H, W\)"):
        compiled(torch.randn(1, 3, 8, 8), 0)  # still validated by UNet.prepare, before anything compiles
    with pytest.raises(TypeError, match="CompiledUNet takes a UNet, got Linear"):
        CompiledUNet(torch.nn.Linear(2, 2))


def test_a_pipeline_samples_the_same_images_through_the_compiled_unet(tiny_latent):
    torch.set_num_threads(1)
    plain = tiny_latent.generate("a red circle", steps=3, seed=3, num_images=2)
    fast = copy.deepcopy(tiny_latent).enable_compiled_unet()
    calls = []
    inner = fast.fast_unet.compiled
    fast.fast_unet.compiled = lambda inputs: calls.append(1) or inner(inputs)
    for got, want in zip(fast.generate("a red circle", steps=3, seed=3, num_images=2), plain, strict=True):
        difference = np.abs(np.asarray(got, dtype=int) - np.asarray(want, dtype=int))
        assert difference.max() <= 1  # float rounding of fused kernels: at most one level of 255
    assert len(calls) == 3  # every step through the compiled graph
    with pytest.raises(ValueError, match="model CPU offload needs the eager U-Net"):
        fast.enable_model_cpu_offload("cpu")
