"""Conditioners: padding masks, unknown words, truncation, Hub-layout round trips, class and map encodings."""

from __future__ import annotations

import logging
import shutil
import typing

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPConfig, CLIPModel

from components.base import WeightsError
from components.conditioners import bert as bert_module  # noqa: F401  (registers "bert")
from components.conditioners import class_label as class_module  # noqa: F401  (registers "class")
from components.conditioners import clip as clip_module  # noqa: F401  (registers "clip")
from components.conditioners import spatial as spatial_module  # noqa: F401  (registers "seg")
from components.conditioners.bert import BERTConditioner
from components.conditioners.class_label import ClassConditioner, ClassConfig
from components.conditioners.clip import CLIPTextConditioner
from components.conditioners.spatial import SpatialConditioner, SpatialConfig, seg
from components.conditioners.tokenizer import CAPTION_VOCABULARY, build_tokenizer, unknown_words
from zoo.registry import CONDITIONERS

CAPTIONS = [
    "a small yellow triangle in the top left on a black background",
    "a red circle on a blue background",
    "a large green square in the center on a white background",
]
TEXT = ("clip", "bert")


@pytest.fixture(scope="module", params=TEXT)
def text(request):
    return CONDITIONERS.build(request.param, tiny=True)


def n_words(text: str) -> int:
    return len(text.split())


# ------------------------------------------------------------------------------------------------ tokenizer
@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_tokenizer_round_trips_and_knows_every_caption_word(kind, tmp_path):
    tokenizer = build_tokenizer(CAPTIONS, kind=kind, vocab_size=200, max_length=16)
    tokenizer.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("a red, zebra!")["input_ids"] == tokenizer("a red, zebra!")["input_ids"]
    assert loaded.model_max_length == 16 and loaded.pad_token_id == 0 and loaded.unk_token_id == 1
    # lower-casing and punctuation splitting: case and spacing around punctuation do not change the ids
    assert tokenizer("A RED,Circle!")["input_ids"] == tokenizer("a red , circle !")["input_ids"]
    for caption in CAPTIONS:  # every caption word is one token: words + start + end
        assert len(tokenizer(caption)["input_ids"]) == n_words(caption) + 2
    assert unknown_words(tokenizer, CAPTIONS) == [[], [], []]


def test_default_vocabulary_and_unknown_word_definition():
    tokenizer = build_tokenizer(kind="wordpiece")
    assert unknown_words(tokenizer, [" ".join(CAPTION_VOCABULARY)]) == [[]]
    # lower-cased, punctuation ignored, each word once, in order
    assert unknown_words(tokenizer, ["A Zebra, a ZEBRA and a unicorn!"]) == [["zebra", "and", "unicorn"]]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kind": "sentencepiece"}, ValueError, "kind must be one of"),
        ({"texts": "a red circle"}, TypeError, "iterable of strings"),
        ({"texts": []}, ValueError, "non-empty"),
        ({"texts": [1, 2]}, ValueError, "non-empty iterable of strings"),
        ({"vocab_size": 10}, ValueError, "vocab_size"),
        ({"max_length": 2}, ValueError, "max_length"),
    ],
)
def test_tokenizer_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_tokenizer(**kwargs)


# ------------------------------------------------------------------------------------------ text conditioners
def test_tokens_and_padding_mask(text):
    prompts = [*CAPTIONS, ""]
    tokens, mask = text(prompts)
    assert tokens.shape == (4, text.max_length, text.dim) and tokens.dtype == torch.float32
    assert mask.dtype == torch.bool
    expected = torch.arange(text.max_length)[None] < torch.tensor([n_words(p) + 2 for p in prompts])[:, None]
    assert torch.equal(mask, expected)  # False exactly on the pad positions, which differ per prompt
    assert len(set(mask.sum(1).tolist())) == 4
    assert torch.isfinite(tokens).all()


def test_padding_does_not_change_real_tokens(text):
    """The mask reaches the attention: a prompt encoded without padding gives the same real-token states."""
    prompt = CAPTIONS[1]
    tokens, mask = text([prompt])
    ids = text.tokenizer([prompt], return_tensors="pt")["input_ids"]
    alone = text.encode(ids, torch.ones_like(ids))
    torch.testing.assert_close(tokens[:, : ids.shape[1]], alone)


def test_unknown_words_reported(text):
    assert text.unknown_words(["a red zebra", CAPTIONS[0], "A Purple UNICORN on a zebra."]) == [
        ["zebra"],
        [],
        ["unicorn", "zebra"],
    ]


def test_overlong_prompt_is_truncated_and_reported(text, caplog):
    long_prompt = " ".join(["a red circle"] * 20)
    assert text.was_truncated([long_prompt, CAPTIONS[0]]) == [True, False]
    with caplog.at_level(logging.WARNING):
        tokens, mask = text([long_prompt])
    assert "truncated" in caplog.text
    assert tokens.shape == (1, text.max_length, text.dim) and bool(mask.all())
    ids = text.tokenizer([long_prompt], truncation=True, max_length=text.max_length)["input_ids"][0]
    end = text.tokenizer.sep_token_id if text.tokenizer.sep_token else text.tokenizer.eos_token_id
    assert len(ids) == text.max_length and ids[-1] == end  # cut, but still closed by the end token


def test_empty_input_through_forward(text):
    tokens, mask = text([text.empty_input()] * 2)
    assert text.empty_input() == ""
    assert tokens.shape == (2, text.max_length, text.dim) and mask.sum(1).tolist() == [2, 2]  # start + end only


def test_save_and_load_identical_outputs(text, tmp_path):
    text.save_pretrained(tmp_path)
    loaded = type(text).from_pretrained(tmp_path)  # the path a Hub id takes (transformers from_pretrained)
    for a, b in zip(text(CAPTIONS), loaded(CAPTIONS), strict=True):
        assert torch.equal(a, b)
    assert loaded.max_length == text.max_length and loaded.unknown_words(["a red zebra"]) == [["zebra"]]


def test_missing_files_are_named(text, tmp_path):
    text.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="model.safetensors"):
        type(text).from_pretrained(tmp_path)
    with pytest.raises(WeightsError, match="is not a folder"):
        type(text).from_pretrained(tmp_path / "nowhere")


def test_outputs_follow_parameter_dtype(text):
    double = type(text)(text.text_model, text.tokenizer)
    double.text_model = double.text_model.to(torch.float64)
    tokens, _ = double(["a red circle"])
    assert tokens.dtype == torch.float64
    text.text_model.to(torch.float32)


@pytest.mark.parametrize(
    ("inputs", "error", "match"),
    [("a red circle", TypeError, "list of strings"), ([], ValueError, "empty batch"), ([3], TypeError, "strings")],
)
def test_text_bad_inputs(text, inputs, error, match):
    with pytest.raises(error, match=match):
        text(inputs)


def test_clip_tokens_are_final_layer_normed_last_hidden_state():
    """Stable Diffusion's context: final_layer_norm applied to the encoder's last hidden state."""
    clip = CLIPTextConditioner.from_config(hidden_size=16, num_layers=2, num_heads=2, max_length=16)
    tokens, mask = clip(CAPTIONS)
    ids = clip.tokenizer(CAPTIONS, padding="max_length", max_length=16, return_tensors="pt")
    out = clip.text_model(**ids, output_hidden_states=True)
    torch.testing.assert_close(tokens, clip.text_model.final_layer_norm(out.hidden_states[-1]))
    assert not torch.allclose(tokens, out.hidden_states[-1])
    eos = (ids["input_ids"] == clip.tokenizer.eos_token_id).int().argmax(1)  # pooled = state at [EOS]
    torch.testing.assert_close(out.pooler_output, tokens[torch.arange(3), eos])


def test_clip_from_clip_model_takes_a_frozen_copy_of_the_text_tower():
    clip = CLIPTextConditioner.from_config(hidden_size=16, num_layers=1, num_heads=2, max_length=16)
    vision = {"image_size": 16, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32}
    vision.update(num_hidden_layers=1, num_attention_heads=2)
    model = CLIPModel(CLIPConfig(text_config=clip.text_model.config.to_dict(), vision_config=vision, projection_dim=8))
    text = CLIPTextConditioner.from_clip_model(model, clip.tokenizer)
    assert text.frozen and all(p.requires_grad for p in model.parameters())
    tokens, _ = text(CAPTIONS)
    ids = clip.tokenizer(CAPTIONS, padding="max_length", max_length=16, return_tensors="pt")
    torch.testing.assert_close(tokens, model.text_model(**ids).last_hidden_state)
    assert not CLIPTextConditioner.from_clip_model(model, clip.tokenizer, freeze=False).frozen
    with pytest.raises(TypeError, match="CLIPModel"):
        CLIPTextConditioner.from_clip_model(clip.text_model, clip.tokenizer)


def test_clip_loads_diffusers_layout(tmp_path):
    clip = CONDITIONERS.build("clip", tiny=True)
    clip.text_model.save_pretrained(tmp_path / "text_encoder")
    clip.tokenizer.save_pretrained(tmp_path / "tokenizer")
    for subfolder in (None, "text_encoder"):  # detected, or named
        loaded = CLIPTextConditioner.from_pretrained(tmp_path, subfolder=subfolder)
        assert torch.equal(loaded(CAPTIONS)[0], clip(CAPTIONS)[0])
    shutil.rmtree(tmp_path / "tokenizer")
    with pytest.raises(WeightsError, match="tokenizer"):
        CLIPTextConditioner.from_pretrained(tmp_path)


def test_bert_and_clip_disagree_on_wrong_model_class():
    clip = CONDITIONERS.build("clip", tiny=True)
    with pytest.raises(TypeError, match="BertModel"):
        BERTConditioner(clip.text_model, clip.tokenizer)


def test_text_config_errors():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        CONDITIONERS.build("bert", tiny=True, hidden_size=18, num_heads=4)


# ------------------------------------------------------------------------------------------------ class label
def test_class_tokens_and_null_class(tmp_path):
    cond = ClassConditioner(ClassConfig(num_classes=5, dim=8))
    tokens, mask = cond([0, 4, 4, cond.empty_input()])
    assert tokens.shape == (4, 1, 8) and mask.shape == (4, 1) and mask.dtype == torch.bool and bool(mask.all())
    assert cond.empty_input() == 5 and cond.null_class == 5
    torch.testing.assert_close(tokens[:, 0], cond.embedding.weight[[0, 4, 4, 5]])
    assert torch.equal(tokens[1], tokens[2]) and not torch.equal(tokens[0], tokens[3])
    assert torch.equal(cond(torch.tensor([1, 2]))[0], cond([1, 2])[0])
    assert cond.unknown_words([1, "x"]) == [[], []]
    cond.save_pretrained(tmp_path)
    assert torch.equal(ClassConditioner.from_pretrained(tmp_path)([0, 5])[0], cond([0, 5])[0])


def test_class_rows_of_several_tokens_mask_the_null_class_past_its_own(tmp_path):
    cond = ClassConditioner(ClassConfig(num_classes=5, dim=8, tokens=3, null_tokens=2))
    tokens, mask = cond([4, 5, 0])
    assert tokens.shape == (3, 3, 8) and mask.tolist() == [[True] * 3, [True, True, False], [True] * 3]
    torch.testing.assert_close(tokens[0], cond.embedding.weight[4].view(3, 8))  # a row is tokens x dim, in order
    cond.save_pretrained(tmp_path)
    again = ClassConditioner.from_pretrained(tmp_path)
    assert again.config.tokens == 3 and again.config.null_tokens == 2
    assert all(torch.equal(a, b) for a, b in zip(again([4, 5]), cond([4, 5]), strict=True))
    one = ClassConditioner(ClassConfig(num_classes=5, dim=8, tokens=3))  # null_tokens None: every token used
    assert bool(one([5])[1].all())


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        ([6], ValueError, r"\[0, 5\].*null class.*\[6\]"),
        ([-1, 2], ValueError, r"\[-1\]"),
        ([], ValueError, "empty batch"),
        ([1.5], TypeError, "ints"),
        (["cat"], TypeError, "ints"),
        ([True], TypeError, "ints"),
        (torch.tensor([0.0]), TypeError, "integer tensor"),
        (torch.zeros(2, 2, dtype=torch.long), ValueError, "1-D"),
        (3, TypeError, "list of ints"),
    ],
)
def test_class_bad_labels(labels, error, match):
    with pytest.raises(error, match=match):
        ClassConditioner(ClassConfig(num_classes=5, dim=8))(labels)


def test_class_config_errors():
    with pytest.raises(ValueError, match=r"ClassConfig.num_classes must be an integer in \[1, 100000\] .*, got 0"):
        ClassConfig(num_classes=0)
    with pytest.raises(ValueError, match=r"ClassConfig.null_tokens must be an integer in \[1, 2\] \(the row holds"):
        ClassConfig(num_classes=5, tokens=2, null_tokens=3)
    with pytest.raises(ValueError, match=r"ClassConfig.tokens must be an integer in \[1, 4096\]"):
        ClassConfig(num_classes=5, tokens=0)
    with pytest.raises(ValueError, match="embedding table's size"):
        ClassConfig(num_classes=100_000, tokens=4096, dim=64)


# ---------------------------------------------------------------------------------------------------- spatial
def random_map(generator: torch.Generator, size: int = 16, labels: int = 4) -> torch.Tensor:
    return torch.randint(0, labels, (size, size), generator=generator)


def test_integer_and_rgb_maps_give_the_same_fractions():
    cond = seg(num_labels=4, downsample_factor=4)
    labels = random_map(torch.Generator().manual_seed(1))
    palette = torch.tensor(cond.config.palette, dtype=torch.uint8)
    rgb = palette[labels]  # (H, W, 3)
    noisy = (rgb.int() + torch.randint(-20, 21, rgb.shape)).clamp(0, 255).to(torch.uint8)  # anti-aliasing-ish
    from_labels = cond(labels)
    assert from_labels.shape == (1, 4, 4, 4)
    for rgb_map in (rgb, rgb.numpy(), Image.fromarray(rgb.numpy()), noisy):
        assert torch.equal(cond(rgb_map), from_labels)
    # label fractions: the mean of the one-hot map over each f x f block, computed independently
    one_hot = torch.stack([(labels == k).float() for k in range(4)])  # (K, H, W)
    torch.testing.assert_close(from_labels[0], one_hot.reshape(4, 4, 4, 4, 4).mean(dim=(2, 4)))
    torch.testing.assert_close(from_labels.sum(1), torch.ones(1, 4, 4))  # fractions sum to 1 per latent pixel


@pytest.mark.parametrize("f", [1, 2, 4, 8])
def test_grid_is_image_size_over_f(f):
    cond = seg(num_labels=3, downsample_factor=f)
    maps = torch.randint(0, 3, (2, 32, 16), dtype=torch.uint8)  # the dataset stores maps as uint8
    out = cond(maps)
    assert out.shape == (2, 3, 32 // f, 16 // f) and out.dtype == torch.float32
    torch.testing.assert_close(out.sum(1), torch.ones(2, 32 // f, 16 // f))
    assert cond(maps, latent_size=(4, 2)).shape == (2, 3, 4, 2)
    assert cond([maps[0], maps[1]]).shape == out.shape


def test_spatial_empty_input_and_save_load(tmp_path):
    cond = seg(num_labels=4, downsample_factor=8)
    empty = cond(cond.empty_input())
    assert empty.shape == (1, 4, 8, 8) and not empty.any()  # the null map: all channels zero
    assert cond.channels == 4 and cond.mode == "concat"
    cond.save_pretrained(tmp_path)
    loaded = SpatialConditioner.from_pretrained(tmp_path)
    assert loaded.config == cond.config
    maps = torch.randint(0, 4, (1, 16, 16))
    assert torch.equal(loaded(maps), cond(maps))
    assert cond.to(torch.float64)(maps).dtype == torch.float64


@pytest.mark.parametrize(
    ("maps", "error", "match"),
    [
        (torch.zeros(16, 16), TypeError, "integer labels or uint8 RGB"),
        ("map.png", TypeError, "tensor, numpy array or PIL image"),
        ([], ValueError, "empty batch"),
        (torch.full((16, 16), 4), ValueError, r"\[0, 3\]"),
        (torch.full((16, 16), -2), ValueError, r"\[0, 3\]"),
        (torch.zeros(18, 16, dtype=torch.long), ValueError, "not divisible by downsample_factor 4"),
        (torch.zeros(1, 1, 16, 16, dtype=torch.long), ValueError, r"\(H, W\) or \(B, H, W\)"),
    ],
)
def test_spatial_bad_maps(maps, error, match):
    with pytest.raises(error, match=match):
        seg(num_labels=4, downsample_factor=4)(maps)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_labels": 3, "palette": ((0, 0, 0), (1, 1, 1))}, "one RGB triple per label"),
        ({"num_labels": 2, "palette": ((0, 0, 0), (0, 0, 0))}, "distinct"),
        ({"num_labels": 2, "palette": ((0, 0, 0), (0, 0, 300))}, r"\[0, 255\]"),
        ({"num_labels": 9}, r"num_labels must be an integer in \[1, 8\] \(without a palette"),
        ({"downsample_factor": 0}, r"SpatialConfig.downsample_factor must be an integer in \[1, 128\] .*, got 0"),
        ({"downsample_factor": 3}, "not divisible"),
    ],
)
def test_spatial_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        seg(**kwargs)


def test_spatial_bad_latent_size():
    with pytest.raises(ValueError, match="latent_size must be an int or"):
        seg()(torch.zeros(8, 8, dtype=torch.long), latent_size=(0, 2))
    with pytest.raises(ValueError, match=r"SpatialConfig.image_size must be an integer in \[1, 4096\] .*, got 0"):
        SpatialConfig(image_size=0)


# -------------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", CONDITIONERS.names())
def test_every_registered_conditioner_builds_tiny_and_round_trips(name, tmp_path):
    cond = CONDITIONERS.build(name, tiny=True)
    assert cond.mode in ("crossattn", "concat")
    batch = [cond.empty_input()] * 2
    if cond.mode == "crossattn":
        tokens, mask = cond(batch)
        assert tokens.shape[0] == 2 and tokens.shape[2] == cond.dim and mask.shape == tokens.shape[:2]
        out = tokens
    else:
        out = cond(batch)
        side = cond.config.image_size // cond.config.downsample_factor
        assert out.shape == (2, cond.channels, side, side)
    cls = typing.get_type_hints(CONDITIONERS.get(name))["return"]  # what zoo.build loads a saved part with
    assert isinstance(cond, cls)
    cond.save_pretrained(tmp_path)
    again = cls.from_pretrained(tmp_path)(batch)
    assert torch.equal(again[0] if isinstance(again, tuple) else again, out)


def test_registered_names():
    assert {"clip", "bert", "class", "seg"} <= set(CONDITIONERS.names())
