"""Hostile cases against a running app (a subprocess): the peak resident memory of the server per case.

    python -m zoo.bench hostile [--tiny] [--images 50] [--all-pipelines]
    python -m zoo.app.hostile ...   # the same

The cases are issue 14's: a 10000x10000 PNG (about 100 KB on disk, 100 M pixels) as the sketchpad drawing to
/switch (map path and text path) and /switch_all and as every other image input of every named endpoint (read
from the server's API description, so a new tab is covered too); a /generate for every registered pipeline, not
only the offered ones; the Zoo tables; a 55 MB JSON body and a 55 MB upload; a prompt just under the body limit;
many images in a row, twice (the growth of memory and cache). With `--all-pipelines` the server offers every pipeline
(ZOO_APP_PIPELINES=all, as a local owner may): one /generate per pipeline then the every-pipeline Zoo table.

Peak RSS per case is the server's high-water mark (VmHWM in /proc/PID/status), reset before each case by writing
5 to /proc/PID/clear_refs (Linux). Printed per case: the outcome, the peak, RSS after it, the file cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from PIL import Image

from zoo.app.soak import folder_size, served

logger = logging.getLogger(__name__)

TARGET_MB = 1536  # issue 14: peak RSS under the hostile cases at most 1.5 GB
BOMB_SIDE = 10000
IMAGE_COMPONENTS = ("image", "imageeditor", "sketchpad", "imagemask", "paint")  # as /gradio_api/info names them
GENERATE = ["ldm-clip-kl", "a red circle", "", "ddpm", 2, 3.0, 0, False, 1]


@dataclasses.dataclass
class Case:
    name: str
    outcome: str  # "12 answered, 3 refused: <first message>"
    seconds: float
    peak_mb: float
    rss_mb: float
    cache_mb: float


class Server:
    """One app process: its HTTP API, its memory (peak since the last reset) and its file cache."""

    def __init__(self, url: str, pid: int, cache: Path, timeout: float = 600):
        self.http = httpx.Client(base_url=url, timeout=timeout)
        self.pid, self.cache = pid, cache

    def status_mb(self, key: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {key} in /proc/{self.pid}/status (peak RSS is measured on Linux only)")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # the high-water mark back to the current RSS

    def call(self, name: str, args: list) -> tuple[str, object]:
        """("complete", outputs), ("error", message) or ("http <code>", body) of one call."""
        response = self.http.post(f"gradio_api/call/{name}", json={"data": args})
        return self.follow(name, response)

    def follow(self, name: str, response: httpx.Response) -> tuple[str, object]:
        if response.status_code != 200:
            return f"http {response.status_code}", response.text[:200]
        event = response.json()["event_id"]
        kind, data = "no event", None
        for line in self.http.get(f"gradio_api/call/{name}/{event}").text.splitlines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind in ("complete", "error"):
                data = json.loads(line.removeprefix("data: "))
        return kind, data

    def upload(self, data: bytes, filename: str = "bomb.png") -> dict:
        files = {"files": (filename, data, "image/png")}
        path = self.http.post("gradio_api/upload", files=files).raise_for_status().json()[0]
        return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": filename}

    def endpoints(self) -> dict[str, list[dict]]:
        info = self.http.get("gradio_api/info").raise_for_status().json()
        return {name.lstrip("/"): spec["parameters"] for name, spec in info["named_endpoints"].items()}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def tally(outcomes: list[tuple[str, object]]) -> str:
    answered = sum(kind == "complete" for kind, _ in outcomes)
    refused = [data for kind, data in outcomes if kind != "complete"]
    first = f": {str(refused[0])[:90]}" if refused else ""
    return f"{answered} answered, {len(refused)} refused{first}"


def measure(server: Server, name: str, requests: Callable[[], list[tuple[str, object]]]) -> Case:
    server.reset_peak()
    begin = time.perf_counter()
    outcome = tally(requests())
    seconds = time.perf_counter() - begin
    peak, rss = server.status_mb("VmHWM"), server.status_mb("VmRSS")
    case = Case(name, outcome, seconds, peak, rss, folder_size(server.cache)[0])
    logger.info(report_line(case))
    return case


def image_calls(server: Server, file: dict) -> Iterator[tuple[str, list]]:
    """Every named endpoint with an image input: its example arguments, `file` in every image slot."""
    for name, parameters in server.endpoints().items():
        slots = [i for i, p in enumerate(parameters) if str(p.get("component")).lower() in IMAGE_COMPONENTS]
        if not slots:
            continue
        args = [p.get("example_input") for p in parameters]
        for i in slots:
            editor = parameters[i]["component"].lower() != "image"
            args[i] = {"background": None, "layers": [], "composite": file} if editor else file
        yield name, args


def cases(server: Server, *, pipelines: list[str], images: int) -> list[Case]:
    """Issue 14's hostile cases, in turn, each measured."""
    bomb = server.upload(png(Image.new("L", (BOMB_SIDE, BOMB_SIDE))))
    big = server.upload(png(Image.new("RGBA", (4096, 4096), (255, 0, 0, 255))))
    drawing = {"background": None, "layers": [], "composite": bomb}
    switch = ["a red circle", "drawn on the sketchpad", drawing, 0, 2]
    body = json.dumps({"data": ["ldm-clip-kl", "x " * (55 * 1024**2 // 2), *GENERATE[2:]]}).encode()
    near_limit = "a red circle " * (1000 * 1024 // 13)  # about 1 MB of prompt: under the body limit
    found = [measure(server, "warm-up: one normal /generate", lambda: [server.call("generate", GENERATE)])]
    hostile: list[tuple[str, Callable[[], list]]] = [
        ("10000^2 PNG drawing, /switch map path", lambda: [server.call("switch", ["semantic map", *switch])]),
        ("10000^2 PNG drawing, /switch text path", lambda: [server.call("switch", ["text (CLIP)", *switch])]),
        ("10000^2 PNG drawing, /switch_all", lambda: [server.call("switch_all", switch)]),
        ("10000^2 PNG, every image input", lambda: every_image_input(server, bomb)),
        ("4096^2 PNG (the largest allowed), every input", lambda: every_image_input(server, big)),
        (f"/generate for all {len(pipelines)} pipelines", lambda: [generate(server, n) for n in pipelines]),
        ("Zoo tables", lambda: [server.call("zoo_table", []), server.call("components", [])]),
        ("55 MB JSON body", lambda: [post(server, "generate", body)]),
        ("55 MB upload", lambda: [upload_outcome(server, b"\x89PNG" + b"\0" * 55 * 1024**2)]),
        ("1 MB prompt", lambda: [server.call("generate", ["ldm-clip-kl", near_limit, *GENERATE[2:]])]),
        ("4096^2 PNG again (retained, or growing?)", lambda: every_image_input(server, big)),
        (f"{images} requests x 4 images", lambda: many(server, 0, images)),
        (f"{images} more (growing?)", lambda: many(server, images, images)),
    ]
    return found + [measure(server, name, requests) for name, requests in hostile]


def every_image_input(server: Server, file: dict) -> list[tuple[str, object]]:
    return [server.call(name, args) for name, args in image_calls(server, file)]


def post(server: Server, name: str, body: bytes) -> tuple[str, object]:
    return server.follow(name, server.http.post(f"gradio_api/call/{name}", content=body))


def generate(server: Server, name: str) -> tuple[str, object]:
    return server.call("generate", [name, "a red circle", "", "ddpm", 2, 3.0, 0, False, 1])


def many(server: Server, first_seed: int, requests: int) -> list[tuple[str, object]]:
    """/generate `requests` times, four images each, a new seed each time: every image a new file in the cache."""
    return [server.call("generate", [*GENERATE[:6], first_seed + i, False, 4]) for i in range(requests)]


def upload_outcome(server: Server, data: bytes) -> tuple[str, object]:
    response = server.http.post("gradio_api/upload", files={"files": ("big.png", data, "image/png")})
    return ("complete" if response.status_code == 200 else f"http {response.status_code}"), response.text[:200]


def run(*, tiny: bool = False, images: int = 50, all_pipelines: bool = False) -> list[Case]:
    """Serve the app from this checkout, replay the hostile cases, stop it; the measured cases."""
    import zoo

    with served(tiny=tiny, env={"ZOO_APP_PIPELINES": "all"} if all_pipelines else {}) as (pid, url, cache):
        return cases(Server(url, pid, cache), pipelines=sorted(zoo.available()), images=images)


def report_line(case: Case) -> str:
    return (
        f"{case.name:46s} {case.seconds:7.1f} s  peak {case.peak_mb:7.1f} MB  RSS after {case.rss_mb:7.1f} MB  "
        f"cache {case.cache_mb:6.2f} MB  {case.outcome}"
    )


def summary(found: list[Case]) -> str:
    peak = max(found, key=lambda c: c.peak_mb)
    verdict = "within" if peak.peak_mb <= TARGET_MB else "OVER"
    return (
        f"peak RSS over all cases {peak.peak_mb:.1f} MB ({peak.name}): {verdict} the {TARGET_MB} MB target; "
        f"RSS from {found[0].rss_mb:.1f} MB after the warm-up to {found[-1].rss_mb:.1f} MB; "
        f"cache at the end {found[-1].cache_mb:.2f} MB"
    )


def main(argv: list[str] | None = None) -> list[Case]:
    parser = argparse.ArgumentParser(prog="python -m zoo.bench hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random pipelines instead of the embedded weights")
    parser.add_argument("--images", type=int, default=50, help="requests of four images each, in each of two cases")
    parser.add_argument("--all-pipelines", action="store_true", help="the server offers every pipeline")
    args = parser.parse_args(argv)
    logger.addHandler(logging.StreamHandler(sys.stdout))
    logger.setLevel(logging.INFO)
    found = run(tiny=args.tiny, images=args.images, all_pipelines=args.all_pipelines)
    logger.info(summary(found))
    return found


if __name__ == "__main__":
    main()
