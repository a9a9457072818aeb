"""A bounded fuzz of every named endpoint (a few hundred hostile inputs, seeded): each one gets a result or a
clear error (never a bare "Error", never a dead server), and normal requests are answered afterwards.

One tiny server (ZOO_APP_TINY=1) for the module, driven over gradio's plain HTTP API (POST
/gradio_api/call/<name>, then its event stream) so the suite takes seconds. The inputs replace one or two of an
endpoint's arguments with values of the wrong type, out of range, huge, empty, or shaped like paths and files;
besides those: an oversized body, and images that are tiny on disk but huge in pixels.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from test_app_e2e import ROOT

from zoo.app.server import serve

EXAMPLE = "1: a large purple triangle in the top right on a blue background"
EDITOR = {"background": None, "layers": [], "composite": None}  # its background is uploaded first (`valid`)
VALID = {
    "generate": ["ldm-clip-kl", "a red circle", "", "ddim", 1, 3.0, 0, False, 1],
    "forward_noise": [EXAMPLE, None, 10, "linear", "pixel", 0],
    "switch": ["text (CLIP)", "a red circle", EXAMPLE, None, 0, 1],
    "switch_all": ["a red circle", EXAMPLE, None, 0, 1],
    "compare_samplers": ["ldm-clip-kl", "a red circle", 1, 3.0, 0, 0.0],
    "swap": ["latent <-> pixel space", "a red circle", 0, 1],
    "inspect_autoencoders": [EXAMPLE, None],
    "one_step": ["ldm-clip-kl", "a red circle", "ddim", 2, 3.0, 0, 1],
    "image_to_image": [
        EDITOR,
        ["SDEdit (image to image)", "inpaint: training-free, RePaint"],
        "centre square",
        "a red circle",
        0.5,
        0,
        2,
        1,
        2,
    ],
    "loss": [["ddpm-vlb-32"], EXAMPLE, None, "every 10th t above 50, and the last (146 of 1000 terms)", 0],
    "zoo_table": [],
    "components": [],
}
HOSTILE = [
    None, "", " ", "x" * 5000, "a " * 3000, "\u202e\u0000\ud7ff", "../../etc/passwd", "/etc/passwd", "upload",
    "drawn on the sketchpad", "sd-v1-5", "ldm-class-kl", "ddpm-linear", -1, 0, 1, 2**31, 2**64, -(2**63), 10**9,
    2.5, -0.5, 1e308, True, False, [], [1, 2], {}, {"path": "/etc/passwd"}, {"url": "http://127.0.0.1:1/x.png"},
    {"composite": None}, {"composite": {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}},
]  # fmt: skip
CASES = 300
UNCLEAR = ("", "Error", "None", "null")


def cases(valid: dict[str, list], seed: int = 0) -> list[tuple[str, list]]:
    """(endpoint, arguments): one or two arguments of a valid call replaced by hostile values."""
    rng = random.Random(seed)
    with_args = [name for name, args in valid.items() if args]
    found = []
    for _ in range(CASES):
        name = rng.choice(with_args)
        args = list(valid[name])
        for index in rng.sample(range(len(args)), k=min(len(args), rng.choice((1, 1, 2)))):
            args[index] = rng.choice(HOSTILE)
        found.append((name, args))
    return found


def call(http: httpx.Client, name: str, args: list) -> tuple[str, object]:
    """("complete", outputs) or ("error", message) of one call through gradio's HTTP API."""
    event = http.post(f"gradio_api/call/{name}", json={"data": args}).raise_for_status().json()["event_id"]
    stream = http.get(f"gradio_api/call/{name}/{event}").raise_for_status().text
    kind, data = None, None
    for line in stream.splitlines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: ") and kind in ("complete", "error"):
            data = json.loads(line.removeprefix("data: "))
    if kind == "error":
        return "error", (data or {}).get("error") if isinstance(data, dict) else data
    return kind or "no event", data


def assert_clear(outcome: tuple[str, object], where: object) -> None:
    kind, data = outcome
    assert kind in ("complete", "error"), f"{where}: the stream ended with {kind}"
    if kind == "error":
        assert isinstance(data, str) and data.strip() not in UNCLEAR and len(data) >= 12, f"{where}: {data!r}"


@pytest.fixture(scope="module")
def http(tmp_path_factory) -> Iterator[httpx.Client]:
    with serve(ROOT, tmp_path_factory.mktemp("fuzz") / "app.log") as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def valid_calls(http: httpx.Client) -> dict[str, list]:
    """VALID, with an uploaded image in the image editor's value."""
    editor = {**EDITOR, "background": upload(http, Image.new("RGB", (64, 64), (30, 60, 200)))}
    return {**VALID, "image_to_image": [editor, *VALID["image_to_image"][1:]]}


def test_every_hostile_input_gets_a_result_or_a_clear_error(http):
    refused, valid = 0, valid_calls(http)
    for name, args in cases(valid):
        outcome = call(http, name, args)
        assert_clear(outcome, (name, args))
        refused += outcome[0] == "error"
    assert refused > CASES // 3  # the hostile values were hostile
    for name, args in valid.items():  # and the server still answers normal requests
        assert call(http, name, args)[0] == "complete"


def upload(http: httpx.Client, image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    files = {"files": ("bomb.png", buffer.getvalue(), "image/png")}
    path = http.post("gradio_api/upload", files=files).raise_for_status().json()[0]
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def test_pixel_bombs_and_huge_bodies_are_refused_with_a_message(http):
    bomb = upload(http, Image.new("L", (10000, 10000)))  # ~100 KB on disk, 100 M pixels
    kind, message = call(http, "forward_noise", ["upload", bomb, 10, "linear", "pixel", 0])
    assert kind == "error" and "10000x10000; images up to 4096x4096" in message
    drawing = {"background": None, "layers": [], "composite": bomb}
    kind, message = call(http, "switch", ["semantic map", "", "drawn on the sketchpad", drawing, 0, 1])
    assert kind == "error" and "10000x10000" in message
    editor = {"background": bomb, "layers": [], "composite": None}
    kind, message = call(http, "image_to_image", [editor, *VALID["image_to_image"][1:]])
    assert kind == "error" and "10000x10000" in message
    kind, message = call(http, "generate", ["ldm-clip-kl", "", "", "ddim", "abc", 3.0, 0, False, 1])
    assert kind == "error" and message == "steps (1 to T) must be a number in [1, 50], got 'abc'"  # tiny T = 50
    huge = http.post("gradio_api/call/generate", content=b"[" + b"1," * 2**20 + b"1]")
    assert huge.status_code == 413 and "larger than this server accepts" in huge.json()["error"]
    assert call(http, "generate", VALID["generate"])[0] == "complete"


def test_twenty_concurrent_clients_get_what_one_client_alone_gets(http):
    """20 clients at once (the queue holds 32), each its own connection and seed: every answer is the image the
    same request gets alone (gradio names result files by their content's hash, so equal paths are equal PNGs)."""
    from concurrent.futures import ThreadPoolExecutor

    def image_path(seed: int, client: httpx.Client) -> str:
        kind, data = call(client, "generate", [*VALID["generate"][:6], seed, False, 1])
        assert kind == "complete", data
        return data[0][0]["image"]["path"]

    alone = [image_path(seed, http) for seed in range(20)]

    def concurrent(seed: int) -> str:
        with httpx.Client(base_url=http.base_url, timeout=120) as client:
            return image_path(seed, client)

    with ThreadPoolExecutor(max_workers=20) as pool:
        together = list(pool.map(concurrent, range(20)))
    assert together == alone and len(set(alone)) == 20
