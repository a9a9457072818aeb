"""The pipelines the app serves, each built once and kept while they fit in a memory budget (LRU by bytes).

Who may ask for what is the server owner's choice, never a request's:
- only the offered pipelines are served (the shipped, trained ones, the two that differ from ldm-clip-kl in
  one part, for the swap view, the loss study's three, for the loss view, and the image-to-image tab's models
  once registered); `ZOO_APP_PIPELINES` lists others (comma-separated registered names, or `all`) for a
  person running the app for themselves;
- a pipeline whose weights are a Hub download is built only from the local cache, unless
  `ZOO_APP_ALLOW_DOWNLOADS=1` (or `allow_downloads=True`) says the server may download it;
- `ZOO_APP_TINY=1` builds every part's tiny variant (random weights, tiny parts: the tests' fast server).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import gc
import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence

import zoo
from zoo.app.guard import check_choice, fail
from zoo.build import embedded_weights
from zoo.pipelines.base import Pipeline
from zoo.train.plan import LOSS_STUDY, SHIPPED

logger = logging.getLogger(__name__)

TINY_ENV = "ZOO_APP_TINY"
PIPELINES_ENV = "ZOO_APP_PIPELINES"
DOWNLOADS_ENV = "ZOO_APP_ALLOW_DOWNLOADS"
MEMORY_ENV = "ZOO_APP_CACHE_MB"
DEFAULT_PIPELINE = "ldm-clip-kl"
SWAP_PARTNERS = ("ldm-bert-kl", "ldm-clip-vq")  # one part away from ldm-clip-kl, for the swap view
IMAGE_MODELS = ("ldm-inpaint-kl", "ldm-sr-kl")  # the image-to-image tab's trained inpainting and super-resolution
OFFERED = tuple(  # the plan may ship some already; an image model only once the registry has it
    dict.fromkeys((*SHIPPED, *SWAP_PARTNERS, *LOSS_STUDY, *(name for name in IMAGE_MODELS if name in zoo.available())))
)
DEFAULT_CACHE_BYTES = 512 * 1024**2  # the offered pipelines take 0.17 GB; one SD checkpoint (2-4 GB) is kept alone
MALLOC_ARENAS = 2  # glibc makes up to 8 heaps per core for the server's threads, each keeping what it freed
M_ARENA_MAX, M_TRIM = -8, 0  # glibc's mallopt parameter number; malloc_trim's padding

Loader = Callable[[str], Pipeline]


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (whose malloc keeps freed memory), else None (macOS, musl: nothing to do)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def limit_heaps(arenas: int = MALLOC_ARENAS) -> None:
    """Fewer glibc heaps for the threads created from now on: the hostile benchmark measured the every-pipeline
    server's peak RSS 230-290 MB lower with 2 (`python -m zoo.bench hostile --all-pipelines`)."""
    if libc := glibc():
        libc.mallopt(M_ARENA_MAX, arenas)


def trim_heap() -> None:
    """Hand the memory freed by evicted pipelines back to the system (glibc keeps it otherwise)."""
    gc.collect()
    if libc := glibc():
        libc.malloc_trim(M_TRIM)


def flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def pipeline_bytes(pipe: Pipeline) -> int:
    """Parameters and buffers of every module, in bytes (what keeping the pipeline costs)."""
    tensors = [t for m in pipe.modules().values() for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)


def build_pipeline(name: str, *, tiny: bool = False) -> Pipeline:
    """zoo.build, with its "random weights" warning sent to the log (the UI says it in words instead)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = zoo.build(name, tiny=tiny)
    for warning in caught:
        logger.warning("%s", warning.message)
    return pipe


class PipelineCache:
    """Offered pipelines by name, built on first use by `loader`, evicted least recently used first once the
    kept ones exceed `max_bytes` (the one just asked for is always kept)."""

    def __init__(
        self,
        offered: Sequence[str] = OFFERED,
        *,
        tiny: bool = False,
        loader: Loader | None = None,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        allow_downloads: bool = False,
    ):
        known = zoo.available()
        for name in offered:
            check_choice("pipeline", name, sorted(known))
        self.offered = tuple(offered)
        self.tiny = tiny
        self.loader = loader or (lambda name: build_pipeline(name, tiny=tiny))
        self.max_bytes = max_bytes
        self.allow_downloads = allow_downloads
        self._pipes: collections.OrderedDict[str, tuple[Pipeline, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, **overrides) -> PipelineCache:
        """The server owner's settings from the environment (see the module's docstring)."""
        chosen = os.environ.get(PIPELINES_ENV, "").strip()
        if chosen == "all":
            offered: Sequence[str] = sorted(zoo.available())
        else:
            extra = [n.strip() for n in chosen.split(",") if n.strip()]
            offered = [*OFFERED, *(n for n in extra if n not in OFFERED)]
        settings = {
            "offered": offered,
            "tiny": flag(TINY_ENV),
            "allow_downloads": flag(DOWNLOADS_ENV),
            "max_bytes": int(float(os.environ.get(MEMORY_ENV, DEFAULT_CACHE_BYTES / 1024**2)) * 1024**2),
        }
        return cls(**{**settings, **overrides})

    def names(self) -> list[str]:
        return list(self.offered)

    def trained(self, name: str) -> bool:
        """Whether `name` has trained weights here (embedded, or a Hub checkpoint); tiny servers have none."""
        return not self.tiny and (embedded_weights(name) is not None or bool(zoo.recipe(name).hub_id))

    def get(self, name: object) -> Pipeline:
        name = check_choice("pipeline", name, self.offered)
        with self._lock:
            if name in self._pipes:
                self._pipes.move_to_end(name)
                return self._pipes[name][0]
            self.check_download(name)
            pipe = self.loader(name)
            self._pipes[name] = (pipe, pipeline_bytes(pipe))
            self.evict()
            return pipe

    def evict(self) -> None:
        """Drop the least recently used pipelines until the kept ones fit (never the newest)."""
        evicted = False
        while len(self._pipes) > 1 and sum(size for _, size in self._pipes.values()) > self.max_bytes:
            name, _ = self._pipes.popitem(last=False)
            logger.info("pipeline cache: evicted %s", name)
            evicted = True
        if evicted:
            trim_heap()

    def cached(self) -> list[str]:
        return list(self._pipes)

    def check_download(self, name: str) -> None:
        """Refuse a Hub checkpoint that is not in the local cache unless the server owner allowed downloads."""
        hub_id = zoo.recipe(name).hub_id
        if self.tiny or not hub_id or self.allow_downloads:
            return
        from zoo.diffusers_layout import is_cached

        if not is_cached(hub_id):
            raise fail(
                f"{name} needs a download of {hub_id} from the Hub, and this server does not download on request; "
                f"whoever runs it can allow that with {DOWNLOADS_ENV}=1 (or download it first)"
            )

    def preload(self, name: str = DEFAULT_PIPELINE) -> threading.Thread:
        """Load a pipeline in the background while the server starts, so the first click only samples."""
        thread = threading.Thread(target=self.get, args=(name,), name=f"preload {name}", daemon=True)
        thread.start()
        return thread
