"""The shapes dataset and the pixel analyser: determinism, splits, captions, maps and images agreeing, errors."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from zoo.data.analyser import Analysis, accuracy_table, analyse, score, shape_mask
from zoo.data.shapes import (
    HELD_OUT_PAIRS,
    PALETTE,
    POSITIONS,
    SEG_PALETTE,
    SHAPES,
    SIZES,
    SPLITS,
    Attributes,
    ShapesDataset,
    caption_vocabulary,
    coverage,
    eval_prompts,
    map_to_rgb,
    parse_caption,
    pregenerate,
    render,
    rgb_to_map,
)


@pytest.fixture(scope="module")
def mixed():
    """500 samples over every split: 200 train, 150 heldout, 150 all."""
    parts = [pregenerate(n, seed=3, split=s) for n, s in ((200, "train"), (150, "heldout"), (150, "all"))]
    return {
        "images": torch.cat([p["images"] for p in parts]),
        "semantic_maps": torch.cat([p["semantic_maps"] for p in parts]),
        "class_labels": torch.cat([p["class_labels"] for p in parts]),
        "captions": sum((p["captions"] for p in parts), []),
        "attributes": sum((p["attributes"] for p in parts), []),
    }


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_tensors_different_seed_different():
    a, b, c = (pregenerate(16, seed=s, split="all") for s in (5, 5, 6))
    for key in ("images", "semantic_maps", "class_labels"):
        assert torch.equal(a[key], b[key])
    assert a["captions"] == b["captions"]
    assert not torch.equal(a["images"], c["images"])
    assert a["captions"] != c["captions"]


def test_item_alone_equals_item_in_pregenerate_and_does_not_depend_on_length():
    batch = pregenerate(12, seed=7, split="train")
    for i in (0, 5, 11):
        item = ShapesDataset(1000, seed=7, split="train")[i]
        assert torch.equal(item["image"], batch["images"][i])
        assert torch.equal(item["semantic_map"], batch["semantic_maps"][i])
        assert item["caption"] == batch["captions"][i]
        assert item["class_label"] == int(batch["class_labels"][i])
        assert item["attributes"] == batch["attributes"][i]
    assert torch.equal(ShapesDataset(12, seed=7)[-1]["image"], batch["images"][11])


def test_item_types_and_ranges():
    item = ShapesDataset(3, seed=0)[2]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["semantic_map"].shape == (64, 64) and item["semantic_map"].dtype == torch.long
    assert isinstance(item["class_label"], int) and isinstance(item["attributes"], Attributes)


def test_pregenerate_uint8_is_the_float_images_before_scaling():
    f, u = pregenerate(4, seed=1), pregenerate(4, seed=1, uint8=True)
    assert u["images"].dtype == torch.uint8
    assert torch.equal(u["images"].float() / 127.5 - 1.0, f["images"])


# --------------------------------------------------------------------------------------------- splits
def test_held_out_pairs_only_in_heldout_and_all():
    held = set(HELD_OUT_PAIRS)
    pairs = {s: {(a.colour, a.shape) for a in pregenerate(300, seed=2, split=s)["attributes"]} for s in SPLITS}
    assert not pairs["train"] & held
    assert pairs["heldout"] == held
    assert pairs["all"] & held and pairs["all"] - held
    assert len(pairs["train"]) == len(SHAPES) * len(PALETTE) - len(held)


def test_shape_colour_never_background_and_class_label_definition(mixed):
    labels = set()
    for attributes, label in zip(mixed["attributes"], mixed["class_labels"].tolist(), strict=True):
        assert attributes.colour != attributes.background
        assert label == SHAPES.index(attributes.shape) * len(PALETTE) + list(PALETTE).index(attributes.colour)
        labels.add(label)
    assert labels <= set(range(24)) and len(labels) == 24


# ------------------------------------------------------------------------------- captions, maps, images agree
def test_analyser_recovers_every_attribute_of_dataset_images(mixed):
    for image, attributes in zip(mixed["images"], mixed["attributes"], strict=True):
        result = score(analyse(image), attributes)
        assert all(result.values()), (attributes, analyse(image))


def test_analyser_mask_is_the_semantic_map_and_caption_names_the_image(mixed):
    for k in range(0, 500, 5):
        semantic_map, attributes = mixed["semantic_maps"][k], mixed["attributes"][k]
        assert np.array_equal(shape_mask(mixed["images"][k]), semantic_map.numpy() > 0)
        assert set(semantic_map.unique().tolist()) == {0, 1 + SHAPES.index(attributes.shape)}
        parsed = parse_caption(mixed["captions"][k])
        for name in ("shape", "colour", "background", "size", "position"):
            assert getattr(parsed, name) in (None, getattr(attributes, name))


@pytest.mark.parametrize("image_size", [32, 128])
def test_other_image_sizes_scale_and_are_read_back(image_size):
    dataset = ShapesDataset(20, seed=4, split="all", image_size=image_size)
    for i in range(20):
        item = dataset[i]
        assert item["image"].shape == (3, image_size, image_size)
        assert all(score(analyse(item["image"]), item["attributes"]).values())


def test_analyser_is_robust_to_mild_noise_and_blur(mixed):
    generator = torch.Generator().manual_seed(0)
    scores = []
    for k in range(0, 500, 2):
        noisy = mixed["images"][k] + 0.1 * torch.randn(mixed["images"][k].shape, generator=generator)
        blurred = Image.fromarray(to_uint8(noisy)).filter(ImageFilter.GaussianBlur(0.8))
        scores.append(score(analyse(blurred), mixed["attributes"][k]))
    assert accuracy_table(scores)["all"] >= 0.97


def test_analyser_reads_pil_uint8_and_float_alike(mixed):
    image = mixed["images"][0]
    assert analyse(image) == analyse(to_uint8(image)) == analyse(Image.fromarray(to_uint8(image)))
    assert analyse(image.numpy()) == analyse(image)


def test_sizes_and_positions_follow_their_categories():
    rng = np.random.default_rng(0)
    for size, position in itertools.product(SIZES, POSITIONS):
        _, semantic_map = render(Attributes("square", "red", "blue", size, position), jitter=rng)
        ys, xs = np.nonzero(semantic_map)
        side = xs.max() - xs.min() + 1
        assert (14 <= side <= 19) if size == "small" else (28 <= side <= 33)
        cx, cy = xs.mean() + 0.5 - 32, ys.mean() + 0.5 - 32
        if position == "center":
            assert max(abs(cx), abs(cy)) < 4
        else:
            assert (cy < -8 if "top" in position else cy > 8) and (cx < -8 if "left" in position else cx > 8)


def test_analyser_says_none_for_what_it_cannot_read():
    plain = np.full((64, 64, 3), PALETTE["green"], dtype=np.uint8)
    assert analyse(plain) == Analysis(background="green", area=0)
    cross = np.zeros((64, 64), dtype=bool)
    cross[30:34, 16:48] = cross[16:48, 30:34] = True  # a plus sign: no template fits
    image = np.where(cross[..., None], PALETTE["red"], PALETTE["black"]).astype(np.uint8)
    assert analyse(image).shape is None and analyse(image).colour == "red"
    middle_left = coverage("circle", 12.0, 32.0, 16.0, 64)[..., None] > 0.5  # between two quadrants
    image = np.where(middle_left, PALETTE["red"], PALETTE["black"]).astype(np.uint8)
    assert analyse(image).position is None and analyse(image).shape == "circle"


def test_score_and_accuracy_table_by_hand():
    read = Analysis(background="blue", colour="red", shape="circle", size="large", position=None)
    assert score(read, parse_caption("a red circle on a blue background")) == dict.fromkeys(
        ("shape", "colour", "background"), True
    )
    wanted = parse_caption("a small red square in the center on a blue background")
    scored = score(read, wanted)
    assert scored == {"shape": False, "colour": True, "background": True, "size": False, "position": False}
    table = accuracy_table([scored, {"shape": True, "colour": True, "background": True}])
    assert table == {
        "shape": 0.5,
        "colour": 1.0,
        "background": 1.0,
        "size": 0.0,
        "position": 0.0,
        "all": 0.5,
        "count": 2.0,
    }


# ------------------------------------------------------------------------------------------------ captions
def test_all_caption_forms_occur_about_a_quarter_each():
    captions = pregenerate(800, seed=11, split="all")["captions"]
    forms = [(parse_caption(c).size is not None, parse_caption(c).position is not None) for c in captions]
    for form in itertools.product((True, False), repeat=2):
        assert abs(forms.count(form) / len(forms) - 0.25) < 0.06  # 4 binomial standard deviations


def test_parse_caption_round_trip_and_vocabulary():
    vocabulary = set(caption_vocabulary())
    for size, position in itertools.product((*SIZES, None), (*POSITIONS, None)):
        wanted = Attributes("triangle", "purple", "white", size, position)
        assert parse_caption(wanted.caption()) == wanted
        assert set(wanted.caption().split()) <= vocabulary
    full = Attributes("circle", "orange", "black", "large", "top left")
    assert parse_caption(full.caption(include_size=False)) == Attributes("circle", "orange", "black", None, "top left")
    assert parse_caption("  A Red  Circle on a blue background. ") == Attributes("circle", "red", "blue")
    every = [
        Attributes(s, c, "black" if c != "black" else "white", z, p)
        for s in SHAPES
        for c in PALETTE
        for z in SIZES
        for p in POSITIONS
    ]
    assert {w for a in every for w in a.caption().split()} == vocabulary


def test_eval_prompts_are_fixed_and_cover_their_pairs_evenly():
    seen, held = eval_prompts("seen", n=36, seed=0), eval_prompts("heldout", n=24, seed=0)
    assert seen == eval_prompts("seen", n=36, seed=0) and seen != eval_prompts("seen", n=36, seed=1)
    held_pairs = [(a.colour, a.shape) for _, a in held]
    assert {held_pairs.count(p) for p in HELD_OUT_PAIRS} == {4}
    seen_pairs = [(a.colour, a.shape) for _, a in seen]
    assert not set(seen_pairs) & set(HELD_OUT_PAIRS) and {seen_pairs.count(p) for p in set(seen_pairs)} == {2}
    for caption, attributes in seen + held:
        assert parse_caption(caption) == attributes
    assert any(a.size is None for _, a in seen) and any(a.position is not None for _, a in seen)


# ------------------------------------------------------------------------------------------- semantic maps
def test_map_rgb_round_trip_including_blended_pixels():
    labels = torch.arange(4).repeat(16, 4)  # (16, 16), every label
    assert torch.equal(rgb_to_map(map_to_rgb(labels)), labels)
    colours = np.asarray([SEG_PALETTE[k] for k in range(4)], dtype=np.float64)
    for (a, b), alpha in itertools.product(itertools.permutations(range(4), 2), (0.1, 0.3, 0.45, 0.49)):
        blended = np.rint((1 - alpha) * colours[a] + alpha * colours[b]).astype(np.uint8)[None, None]
        assert rgb_to_map(blended).item() == a, (a, b, alpha)
    stroke = np.zeros((1, 3, 4), dtype=np.uint8)
    stroke[0, :, :3], stroke[0, :, 3] = SEG_PALETTE[2], (0, 100, 255)  # transparent, faint, opaque
    assert rgb_to_map(stroke).tolist() == [[0, 0, 2]]
    assert torch.equal(rgb_to_map(Image.fromarray(map_to_rgb(labels))), labels)


# ---------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: ShapesDataset(-1), ValueError, "num_samples must be an integer >= 0, got -1"),
        (lambda: ShapesDataset(4, split="test"), ValueError, "unknown split 'test'"),
        (lambda: ShapesDataset(4, seed=-2), ValueError, "seed must be an integer >= 0, got -2"),
        (lambda: ShapesDataset(4, image_size=30), ValueError, "image_size must be an integer >= 32"),
        (lambda: ShapesDataset(4)[4], IndexError, "index 4 out of range .* 4 samples"),
        (lambda: ShapesDataset(4)[-5], IndexError, "out of range"),
        (lambda: ShapesDataset(4)[1.0], TypeError, "index must be an integer, got 1.0"),
        (lambda: pregenerate(-3), ValueError, "num_samples must be an integer >= 0, got -3"),
        (lambda: pregenerate(3, split="val"), ValueError, r"allowed: \['train', 'heldout', 'all'\]"),
        (lambda: Attributes("hexagon", "red", "blue"), ValueError, "shape must be one of"),
        (lambda: Attributes("circle", "pink", "blue"), ValueError, "colour must be one of"),
        (lambda: Attributes("circle", "red", "red"), ValueError, "must differ"),
        (lambda: Attributes("circle", "red", "blue", position="middle"), ValueError, "position must be one of"),
        (lambda: Attributes(None, "red", "blue").caption(), ValueError, "needs shape, colour and background"),
        (lambda: render(Attributes("circle", "red", "blue")), ValueError, "complete Attributes"),
        (lambda: parse_caption("a red circle"), ValueError, "not a caption"),
        (lambda: parse_caption("a red circle on a red background"), ValueError, "must differ"),
        (lambda: parse_caption(3), TypeError, "caption must be a str"),
        (lambda: eval_prompts("train"), ValueError, "'seen' or 'heldout'"),
        (lambda: analyse("image.png"), TypeError, "expected a PIL image"),
        (lambda: analyse(torch.zeros(2, 3, 64, 64)), ValueError, "expected one image"),
        (lambda: analyse(np.zeros((64, 64, 3), dtype=np.float32)), ValueError, "expected one image"),
        (lambda: score(analyse(np.zeros((64, 64, 3), np.uint8)), "a red circle"), TypeError, "score"),
        (lambda: accuracy_table([]), ValueError, "at least one"),
        (lambda: map_to_rgb(torch.full((2, 2), 4)), ValueError, r"must lie in \[0, 3\]"),
        (lambda: map_to_rgb(torch.zeros(2, 2)), TypeError, "integer"),
        (lambda: rgb_to_map(np.zeros((4, 4), dtype=np.uint8)), TypeError, "uint8 \\(H, W, 3\\|4\\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()
