"""Soak: N requests against a running app (a subprocess), its resident memory and file cache measured as it goes.

    python -m zoo.bench soak [--requests 500] [--every 50] [--tiny] [--delete-cache 60,600]
    python -m zoo.app.soak ...   # the same

The requests cycle through the endpoints (text to image and the switch with 2 sampler steps, forward noise,
the Zoo table) with changing seeds, so every answer writes new files to gradio's cache. Printed per `every`
requests: RSS of the server process (MB) and the size of its cache folder (MB, files). Memory growth is
measured from the end of the warm-up (the first `every` requests, which load the pipelines).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from zoo.app.server import start, stop

logger = logging.getLogger(__name__)

EXAMPLE = "1: a large purple triangle in the top right on a blue background"


@dataclasses.dataclass
class SoakPoint:
    requests: int
    seconds: float
    rss_mb: float
    cache_mb: float
    cache_files: int


def folder_size(folder: Path) -> tuple[float, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1024**2, len(files)


def request(client, index: int) -> None:
    """One request of the cycle; the seed changes so every answer is a new file."""
    kind = index % 4
    if kind == 0:
        client.predict("ldm-clip-kl", "a red circle", "", "ddpm", 2, 3.0, index, False, 1, api_name="/generate")
    elif kind == 1:
        client.predict(EXAMPLE, None, 1 + index % 50, "linear", "pixel", index, api_name="/forward_noise")
    elif kind == 2:
        client.predict("text (CLIP)", "a blue square", EXAMPLE, None, index, 2, api_name="/switch")
    else:
        client.predict(api_name="/zoo_table")


def soak(
    requests: int = 500, every: int = 50, *, tiny: bool = False, delete_cache: str | None = None
) -> list[SoakPoint]:
    """Serve the app from this checkout, send `requests` requests, measure every `every`; the server is stopped."""
    from gradio_client import Client

    with served(tiny=tiny, env={"ZOO_APP_DELETE_CACHE": delete_cache} if delete_cache else {}) as (pid, url, cache):
        client = Client(url, verbose=False)
        server = psutil.Process(pid)
        points, begin = [], time.perf_counter()
        for index in range(1, requests + 1):
            request(client, index)
            if index % every == 0 or index == requests:
                size, count = folder_size(cache)
                rss = server.memory_info().rss / 1024**2
                points.append(SoakPoint(index, time.perf_counter() - begin, rss, size, count))
                logger.info(report_line(points[-1]))
    return points


@contextlib.contextmanager
def served(*, tiny: bool, env: dict[str, str]) -> Iterator[tuple[int, str, Path]]:
    """The app from this checkout in its own process, its file cache in a temporary folder: (pid, URL, that
    folder); always stopped afterwards."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "gradio"
        process, url = start(root, Path(tmp) / "app.log", tiny=tiny, env={"GRADIO_TEMP_DIR": str(cache), **env})
        try:
            yield process.pid, url, cache
        finally:
            stop(process)


def report_line(point: SoakPoint) -> str:
    return (
        f"{point.requests:6d} requests  {point.seconds:7.1f} s  RSS {point.rss_mb:7.1f} MB  "
        f"cache {point.cache_mb:6.2f} MB in {point.cache_files} files"
    )


def summary(points: list[SoakPoint]) -> str:
    warm, last = points[0], points[-1]
    return (
        f"RSS growth after warm-up ({warm.requests} -> {last.requests} requests): "
        f"{last.rss_mb - warm.rss_mb:+.1f} MB; "
        f"peak RSS {max(p.rss_mb for p in points):.1f} MB; cache at the end {last.cache_mb:.2f} MB "
        f"(largest {max(p.cache_mb for p in points):.2f} MB)"
    )


def main(argv: list[str] | None = None) -> list[SoakPoint]:
    parser = argparse.ArgumentParser(prog="python -m zoo.bench soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests in all")
    parser.add_argument("--every", type=int, default=50, help="measure after every this many requests")
    parser.add_argument("--tiny", action="store_true", help="tiny random pipelines instead of the embedded weights")
    parser.add_argument("--delete-cache", help="FREQUENCY,AGE seconds of gradio's cache sweep (default 60,600)")
    args = parser.parse_args(argv)
    logger.addHandler(logging.StreamHandler(sys.stdout))
    logger.setLevel(logging.INFO)
    points = soak(args.requests, args.every, tiny=args.tiny, delete_cache=args.delete_cache)
    logger.info(summary(points))
    return points


if __name__ == "__main__":
    main()
