"""Slow (`pytest -m slow`): 500 requests against the app; memory stays flat after warm-up and the file cache
is swept (issue 14's targets: RSS growth <= 20 MB over 500 requests, a bounded cache folder)."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio_client")
pytest.importorskip("psutil")

from zoo.app import soak  # noqa: E402

pytestmark = pytest.mark.slow


def test_500_requests_keep_memory_flat_and_the_cache_bounded():
    points = soak.soak(500, 100, tiny=True, delete_cache="2,5")  # sweep every 2 s the files older than 5 s
    print(soak.summary(points))
    warm, last = points[0], points[-1]
    assert last.requests == 500 and last.rss_mb - warm.rss_mb <= 20
    assert max(p.cache_mb for p in points) < 20 and last.cache_files < 200
