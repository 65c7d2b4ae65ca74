"""A model's files: hash, publish into the tenant's storage, verify before loading.

Run by the tenant's own processes (the SDK), never by the server on tenant files. The hash is
SHA-256 over the sorted list of (relative path, size, SHA-256 of the bytes) of every regular
file: the same folder anywhere hashes the same. Symbolic links and special files are refused
(a model is plain files), so a published folder can never point outside itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from fastgpu.errors import InvalidRequest

MODELS_DIR = "models"
HASH_PREFIX = 16


def _files(folder: Path) -> list[tuple[str, Path, int]]:
    if not folder.is_dir() or folder.is_symlink():
        raise InvalidRequest(f"checkpoint: {folder} is not a folder")
    out = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in dirs + names:
            full = Path(root) / name
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise InvalidRequest(f"checkpoint: {full} is a link; a model is plain files")
            if stat.S_ISREG(st.st_mode):
                out.append((full.relative_to(folder).as_posix(), full, st.st_size))
            elif not stat.S_ISDIR(st.st_mode):
                raise InvalidRequest(f"checkpoint: {full} is not a regular file")
    if not out:
        raise InvalidRequest(f"checkpoint: {folder} holds no files")
    return sorted(out)


def content_hash(folder: str | Path) -> tuple[str, int]:
    """(hex SHA-256, total bytes) of the folder's files."""
    total = hashlib.sha256()
    size = 0
    for rel, full, n in _files(Path(folder)):
        h = hashlib.sha256()
        with open(full, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        total.update(f"{rel}\0{n}\0{h.hexdigest()}\n".encode())
        size += n
    return total.hexdigest(), size


def model_path(name: str, digest: str) -> str:
    """The folder of a model's files, relative to the tenant's storage."""
    return f"{MODELS_DIR}/{name}/{digest[:HASH_PREFIX]}"


def publish(checkpoint: str | Path, storage: str | Path, name: str) -> tuple[str, str, int]:
    """Copy a checkpoint folder into ``<storage>/models/<name>/<hash16>/`` (complete or not at
    all: copied beside it, then renamed); return (relative path, hash, bytes). The same content
    published twice is one folder."""
    digest, size = content_hash(checkpoint)
    rel = model_path(name, digest)
    dest = Path(storage) / rel
    if dest.is_dir():
        if content_hash(dest)[0] == digest:
            return rel, digest, size
        shutil.rmtree(dest)  # a damaged copy: replace it
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=dest.parent))
    try:
        shutil.copytree(checkpoint, staging / "files", symlinks=True)
        if content_hash(staging / "files")[0] != digest:
            raise InvalidRequest(f"checkpoint: {checkpoint} changed while it was copied")
        os.rename(staging / "files", dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rel, digest, size


def verify(folder: str | Path, expected: str) -> None:
    """Raise InvalidRequest unless the folder's files hash to ``expected``."""
    got, _ = content_hash(folder)
    if got != expected:
        raise InvalidRequest(
            f"model files at {folder} changed since registration (hash {got[:12]}, registered "
            f"{expected[:12]}); register them again"
        )
