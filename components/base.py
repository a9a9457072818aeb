"""What every neural component shares: a frozen dataclass config, and Hub-layout save/load.

A component is an `nn.Module` whose constructor takes one config dataclass. It is saved as
`config.json` + `model.safetensors` (huggingface_hub's PyTorchModelHubMixin) and loaded from a local
folder or a Hub repo id with `strict=True`. Only safetensors and JSON are read: never a pickle.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, ClassVar, Self

from huggingface_hub import PyTorchModelHubMixin, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from torch import nn

from components.validation import (
    MAX_CHANNEL_MULT,
    MAX_CHANNELS,
    MAX_LEVELS,
    MAX_PARAMETERS,
    require_int,
    require_int_sequence,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class WeightsError(RuntimeError):
    """Weights that are missing, corrupt, or do not fit the model; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Base for component configs: JSON lists come back as tuples, so configs stay hashable and comparable.
    `added_fields`: fields added after weights were saved without them; a config.json that lacks one means its
    default, which must be what the component did before the field existed (every other field must be there)."""

    added_fields: ClassVar[frozenset[str]] = frozenset()
    # fields that shape only the inside of a part: swapping in a part that differs in them (`zoo.train export
    # --part`) leaves every other part's inputs as they were trained
    internal_fields: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(tuple(v) if isinstance(v, list) else v for v in value))

    def check_ints(self, *names: str, minimum: int = 1, maximum: int | None = None, why: str | None = None) -> None:
        """Each named field must be an integer in [minimum, maximum] (the message names the config and the field)."""
        for name in names:
            field = f"{type(self).__name__}.{name}"
            require_int(field, getattr(self, name), minimum=minimum, maximum=maximum, why=why)

    def check_levels(self, base: str) -> None:
        """channel_mult: at most MAX_LEVELS entries in [1, MAX_CHANNEL_MULT], and each level's width, `base` (a
        field) times its entry, at most MAX_CHANNELS."""
        name, why = type(self).__name__, f"at most {MAX_LEVELS} levels of x{MAX_CHANNEL_MULT}: SD's are (1, 2, 4, 4)"
        mult = self.channel_mult
        mult = require_int_sequence(
            f"{name}.channel_mult", mult, minimum=1, maximum=MAX_CHANNEL_MULT, max_length=MAX_LEVELS, why=why
        )
        for i, m in enumerate(mult):
            width = f"{name} level {i}'s channels ({base} * channel_mult[{i}])"
            require_int(width, getattr(self, base) * m, maximum=MAX_CHANNELS, why="SD's widest level has 1280")

    def check_parameters(self, estimate: int, knobs: str) -> None:
        """A network's estimated parameter count, from its already-bounded `knobs`, against MAX_PARAMETERS: checked
        before any module is built, so a config too large for memory fails at once instead of in the allocator."""
        require_int(
            f"{type(self).__name__}: the parameters estimated from {knobs}",
            estimate,
            maximum=MAX_PARAMETERS,
            why="4 bytes each in float32; SDXL's U-Net has 2.6e9",
        )

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")  # "user/name": a bare name is local


def is_local(path_or_repo: str | os.PathLike) -> bool:
    """True when `path_or_repo` names a local folder, never a Hub repo: a Path, anything that exists here, a string
    that is not shaped like a repo id (x, ./x, /x, ~/x, a/b/c), or "a/b" whose "a" is a folder here (runs/model)."""
    if isinstance(path_or_repo, os.PathLike) or not isinstance(path_or_repo, str):
        return True
    first = path_or_repo.split("/")[0]
    shaped = HUB_REPO_ID.fullmatch(path_or_repo) is not None
    return not shaped or Path(path_or_repo).exists() or Path(first).is_dir()


def resolve_folder(path_or_repo: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any) -> Path:
    """A local folder as is, else a Hub repo id downloaded (and cached) by huggingface_hub: JSON/safetensors/text.
    A local path that is missing is an error at once: it never turns into a Hub request."""
    local = Path(path_or_repo)
    if local.is_dir():
        folder = local / subfolder if subfolder else local
        if not folder.is_dir():
            raise WeightsError(f"{folder} does not exist (expected a component folder inside {local})")
        return folder
    if is_local(path_or_repo):
        raise WeightsError(
            f"{local} is not a folder (a saved pipeline or part: {CONFIG_NAME} + {WEIGHTS_NAME}, or recipe.json "
            "+ one folder per part); a Hub repo id is 'user/name'"
        )
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    if subfolder:
        patterns = [f"{subfolder}/{p}" for p in patterns]
    root = hub_snapshot(str(path_or_repo), WeightsError, allow_patterns=patterns, **hub_kwargs)
    return root / subfolder if subfolder else root


HUB_PROBE_SECONDS = 1.5  # a TCP connection to the Hub (or the proxy) that does not open by then counts as none
_probed: dict[str, tuple[float, str | None]] = {}  # endpoint -> (when, why unreachable): one probe per 10 s


def hub_offline() -> str | None:
    """Which of HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE turns the Hub off, as huggingface_hub read them at import (it
    reads them once) or as they are set now; None when neither does."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return "HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE else None


def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """None when a TCP connection to the Hub's endpoint (or the HTTPS proxy) opens within `timeout` seconds, else
    why not. In a thread, so a name lookup that hangs is bounded too."""
    from huggingface_hub import constants

    target = urllib.parse.urlsplit(urllib.request.getproxies().get("https") or constants.ENDPOINT)
    host, port = target.hostname or "", target.port or (443 if target.scheme == "https" else 80)
    when, why = _probed.get(f"{host}:{port}", (-1e9, None))
    if time.monotonic() - when < 10:
        return why
    found: list[str | None] = [f"no connection to {host}:{port} within {timeout} s"]

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            found[0] = None
        except OSError as err:
            found[0] = f"cannot connect to {host}:{port} ({err})"

    probe = threading.Thread(target=connect, name="hub probe", daemon=True)
    probe.start()
    probe.join(timeout)
    _probed[f"{host}:{port}"] = (time.monotonic(), found[0])
    return found[0]


def hub_blocked() -> str | None:
    """None when the Hub may be asked now; else why not (offline by HF_HUB_OFFLINE, or unreachable)."""
    offline = hub_offline()
    return f"{offline} is set" if offline else hub_unreachable()


def hub_snapshot(repo_id: str, error: type[Exception], **hub_kwargs: Any) -> Path:
    """huggingface_hub's snapshot_download of `repo_id`, quick to fail: offline or with the Hub unreachable only
    the local cache is read (huggingface_hub itself would retry for ~25 s), and a repo not there is `error` at
    once, saying what was looked for and how to allow the download."""
    from huggingface_hub import constants

    blocked = hub_blocked()
    try:
        return Path(snapshot_download(repo_id, **hub_kwargs, **({"local_files_only": True} if blocked else {})))
    except (HfHubHTTPError, OSError, ValueError) as err:  # LocalEntryNotFoundError (not cached) is an OSError
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if not blocked:
            raise error(
                f"{repo_id!r} is no local folder, and the Hub repo of that name cannot be fetched ({first}); log in "
                "with `hf auth login` if the repo is gated, or pass a local folder"
            ) from err
        allow = (
            f"unset {blocked.split()[0]} before Python starts (huggingface_hub reads it at import)"
            if blocked.endswith(" is set")
            else "connect to the internet (or set HTTPS_PROXY)"
        )
        raise error(
            f"{repo_id!r} is no folder here ({Path(repo_id).resolve()} does not exist) and not in the huggingface_hub "
            f"cache ({constants.HF_HUB_CACHE}); the Hub was not asked: {blocked}. To download it, {allow}; or pass "
            "a local folder"
        ) from err


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path` (UTF-8); anything else is a WeightsError that names the file."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path} is not UTF-8 JSON: {err}") from err
    if not isinstance(data, dict):
        raise WeightsError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_config(config_class: type[Config], path: Path) -> Config:
    """A config from its config.json: every field present (a missing one would silently take its default) but
    the class's `added_fields`, none unknown, each value valid; the message names the file and the field."""
    data, fields = read_json_object(path), {f.name for f in dataclasses.fields(config_class)}
    missing = fields - set(data) - config_class.added_fields
    for what, names in (("misses", missing), ("has unknown", set(data) - fields)):
        if names:
            raise WeightsError(
                f"{path} {what} fields {sorted(names)} of {config_class.__name__} (its fields: {sorted(fields)})"
            )
    try:
        return config_class(**data)
    except (TypeError, ValueError) as err:  # a bad value: the config's own checks name the field
        raise WeightsError(f"{path} is not a valid {config_class.__name__}: {err}") from err


class HubModule(nn.Module, PyTorchModelHubMixin):
    """nn.Module + Hub layout. Subclasses set `config_class` and take `config: <that class>` in `__init__`."""

    config_class: type[Config] = Config

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, *, subfolder: str | None = None, **kwargs: Any) -> Self:
        """Load config.json + model.safetensors from a folder or a Hub repo id, strictly (every key must match)."""
        folder = resolve_folder(path_or_repo, subfolder, **kwargs)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                raise WeightsError(f"missing {folder / name} (a component folder has {CONFIG_NAME}, {WEIGHTS_NAME})")
        model = cls(read_config(cls.config_class, folder / CONFIG_NAME))
        try:
            from components import storage

            model.load_state_dict(storage.read(folder / WEIGHTS_NAME), strict=True)  # int8 storage dequantised
        except Exception as err:  # safetensors raises several types for corrupt headers and bad keys
            raise WeightsError(f"cannot load {folder / WEIGHTS_NAME} into {cls.__name__}: {err}") from err
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Any:
        """config.json from the config the module holds now (a config replaced after training, e.g. with the
        measured scaling_factor, is the one written), + model.safetensors."""
        return super().save_pretrained(save_directory, config=self.config, **kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
