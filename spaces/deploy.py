"""Assemble the Hugging Face Space bundle and upload it.

    python spaces/deploy.py --repo user/name             # assemble in a temporary folder, upload (HF_TOKEN or login)
    python spaces/deploy.py --dry-run --out build/space  # assemble only: a folder you can run `python app.py` in

The bundle: app.py, the zoo/ package (with the embedded weights in zoo/weights/), components/, this folder's
README.md (the Space's front matter) and requirements.txt. Nothing else: no tests, no runs, no caches.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
CODE = ("app.py", "zoo", "components")  # relative to the repository root; zoo/ carries zoo/weights/
SPACE_FILES = ("README.md", "requirements.txt")  # from spaces/, to the bundle's root
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".ruff_cache")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def check_repo(repo: str) -> str:
    if not REPO_ID.match(repo):
        raise ValueError(f"--repo must look like 'user/name' (letters, digits, '-', '_', '.'), got {repo!r}")
    return repo


def assemble(out: str | Path) -> Path:
    """Copy the bundle into `out`, which must be missing or empty (nothing of yours is overwritten)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    for name in CODE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, out / name, ignore=IGNORE)
        else:
            shutil.copy2(source, out / name)
    for name in SPACE_FILES:
        shutil.copy2(HERE / name, out / name)
    weights = out / "zoo" / "weights"
    shipped = sorted(p.name for p in weights.iterdir() if p.is_dir()) if weights.is_dir() else []
    logger.info("assembled %s (embedded weights: %s)", out, ", ".join(shipped) or "none yet")
    return out


def upload(folder: Path, repo: str, *, private: bool = False, token: str | None = None) -> str:
    """Create the Space (gradio SDK) if needed and upload the bundle as one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(check_repo(repo), repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo, repo_type="space", folder_path=str(folder), commit_message="Deploy Diffusion Zoo"
    )
    return str(info)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", help="the Space to upload to, as user/name")
    parser.add_argument("--dry-run", action="store_true", help="assemble the bundle in --out, upload nothing")
    parser.add_argument("--out", help="where to assemble the bundle (default: a temporary folder)")
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    parser.add_argument("--token", help="a Hugging Face token (default: HF_TOKEN or `hf auth login`)")
    args = parser.parse_args(argv)
    if args.dry_run and not args.out:
        parser.error("--dry-run needs --out DIR: the folder to assemble the bundle in")
    if not args.dry_run and not args.repo:
        parser.error("give --repo user/name to upload, or --dry-run --out DIR to only assemble the bundle")
    if args.repo:
        try:
            check_repo(args.repo)
        except ValueError as err:
            parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    if args.dry_run:
        try:
            assemble(args.out)
        except FileExistsError as err:
            raise SystemExit(f"error: {err}") from err
        return
    if args.out:
        logger.info("uploaded: %s", upload(assemble(args.out), args.repo, private=args.private, token=args.token))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = assemble(Path(tmp) / "space")
        logger.info("uploaded: %s", upload(folder, args.repo, private=args.private, token=args.token))


if __name__ == "__main__":
    main()
