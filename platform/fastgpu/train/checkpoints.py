"""Training checkpoints in the tenant's storage: layout, atomic publication, keep-last-K, resume.

Layout (one directory per run; Ray Train's own bookkeeping files sit next to ours)::

    <storage_root>/<tenant>/runs/<run>/
        step-000000050/             one checkpoint, named by its global optimizer step
            state.pt                torch.save of {"model": ..., "optimizer": ..., "scaler": ...}
            fastgpu_checkpoint.json manifest: step, reason, metrics, metadata, file sizes+sha256
        step-000000100/
        .tmp-step-000000150-<hex>/  a save in progress (or one a crash left behind)

Invariants:

- A checkpoint directory only ever appears under its final name complete: it is written in a
  ``.tmp-*`` sibling and renamed (``os.replace`` on one filesystem is atomic), so a crash during a
  save leaves a ``.tmp-*`` directory that readers ignore and :meth:`CheckpointStore.clean_partial`
  removes. Readers also check the manifest's file sizes (cheap) before trusting a directory, which
  covers copies made by tools that do not rename.
- "Latest" means the complete checkpoint with the highest step.
- Paths are built from validated names only (``fastgpu.validation.NAME_PATTERN``) and resolved
  paths must stay inside ``<storage_root>/<tenant>/``: a symlink or ``..`` that leads elsewhere is
  refused with :class:`~fastgpu.errors.PermissionDenied`.

Vocabulary: *reason* is why a checkpoint was taken: ``periodic`` (every N steps), ``preemption``
(just in time, when Ray Train announces a node drain), ``stop`` (the run's deadline, e.g. its
lease's expiry, is near), ``final`` (end of training).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastgpu.errors import InvalidRequest, NotFound, PermissionDenied
from fastgpu.validation import NAME_PATTERN, NAME_RULE

MANIFEST = "fastgpu_checkpoint.json"
STATE_FILE = "state.pt"
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"
REASONS = ("periodic", "preemption", "stop", "final")

_NAME = re.compile(NAME_PATTERN)
_CHECKPOINT_DIR = re.compile(r"^step-(\d{9})$")


def _check_name(field: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidRequest(f"{field}: got {value!r}; expected {NAME_RULE}")
    return value


def tenant_dir(storage_root: str | os.PathLike[str], tenant: str) -> Path:
    """``<storage_root>/<tenant>``, absolute; the boundary no tenant path may leave."""
    _check_name("tenant", tenant)
    if not str(storage_root):
        raise InvalidRequest("storage_root: got ''; expected a directory path")
    return Path(storage_root).expanduser().resolve() / tenant


def _inside(path: Path, boundary: Path, what: str) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(boundary.resolve()):
        raise PermissionDenied(
            f"{what}: {str(path)!r} resolves outside the tenant's directory; "
            "checkpoints must stay under <storage_root>/<tenant>/"
        )
    return resolved


def run_dir(storage_root: str | os.PathLike[str], tenant: str, run: str) -> Path:
    """``<storage_root>/<tenant>/runs/<run>``, validated and confined to the tenant directory."""
    _check_name("run_name", run)
    base = tenant_dir(storage_root, tenant)
    return _inside(base / "runs" / run, base, "run directory")


def resolve_checkpoint(
    storage_root: str | os.PathLike[str], tenant: str, path: str | os.PathLike[str]
) -> Path:
    """A user-given checkpoint path (absolute, or relative to the tenant directory), checked to
    lie inside the tenant's directory and to be complete."""
    base = tenant_dir(storage_root, tenant)
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = base / candidate
    resolved = _inside(candidate, base, "checkpoint")
    if not is_complete(resolved):
        raise NotFound(f"checkpoint: no complete checkpoint at {str(path)!r}")
    return resolved


def checkpoint_dir_name(step: int) -> str:
    """``50`` -> ``"step-000000050"``: zero-padded so names sort like steps."""
    if step < 0:
        raise InvalidRequest(f"step: got {step}; expected an integer >= 0")
    return f"step-{step:09d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint_files(
    directory: Path,
    *,
    step: int,
    state: Mapping[str, Any],
    reason: str = "periodic",
    metrics: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``state.pt`` and the manifest into ``directory`` (which must not be published yet).

    The manifest is written last and lists every file's size and sha256.
    """
    if reason not in REASONS:
        raise InvalidRequest(f"reason: got {reason!r}; expected one of {', '.join(REASONS)}")
    directory.mkdir(parents=True, exist_ok=True)
    state_path = directory / STATE_FILE
    torch.save(dict(state), state_path)
    with state_path.open("rb+") as f:
        os.fsync(f.fileno())
    manifest = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "reason": reason,
        "created_at": time.time(),
        "metrics": dict(metrics or {}),
        "metadata": dict(metadata or {}),
        "files": {STATE_FILE: {"size": state_path.stat().st_size, "sha256": _sha256(state_path)}},
    }
    manifest_path = directory / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    with manifest_path.open("rb+") as f:
        os.fsync(f.fileno())
    return directory


def publish(source: Path, parent: Path, name: str, *, move: bool = False) -> Path:
    """Publish the directory ``source`` as ``parent/name`` atomically; return the final path.

    ``move=False`` copies ``source`` into ``parent/.tmp-<name>-<hex>`` first; ``move=True`` renames
    ``source`` itself, which must already be a ``.tmp-*`` directory in ``parent``. If ``name``
    already exists (a step re-run after a restart), the old one is moved aside first and removed
    after, so readers see either the old or the new checkpoint, never a mix.
    """
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / name
    if move:
        if source.parent.resolve() != parent.resolve() or not source.name.startswith(TMP_PREFIX):
            raise InvalidRequest(
                f"source: got {str(source)!r}; expected a {TMP_PREFIX}* directory "
                f"in {str(parent)!r}"
            )
        tmp = source
    else:
        tmp = parent / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(source, tmp)
    old: Path | None = None
    if final.exists():
        old = parent / f"{TMP_PREFIX}{name}-old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the checkpoint at ``path``; NotFound when it has none."""
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise NotFound(f"checkpoint: {str(path)!r} has no readable {MANIFEST}") from exc


def is_complete(path: Path, *, verify_hash: bool = False) -> bool:
    """True when ``path`` holds a manifest and every file it lists, with the listed size."""
    try:
        manifest = read_manifest(path)
        for name, info in manifest["files"].items():
            file = path / name
            if file.stat().st_size != info["size"]:
                return False
            if verify_hash and _sha256(file) != info["sha256"]:
                return False
    except (NotFound, OSError, KeyError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint on disk."""

    path: Path
    step: int
    reason: str
    metrics: dict[str, Any]
    metadata: dict[str, Any]


def checkpoint_info(path: Path) -> CheckpointInfo:
    manifest = read_manifest(path)
    return CheckpointInfo(
        path=path,
        step=int(manifest["step"]),
        reason=str(manifest.get("reason", "periodic")),
        metrics=dict(manifest.get("metrics", {})),
        metadata=dict(manifest.get("metadata", {})),
    )


def load_state(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """The ``state.pt`` dict of a complete checkpoint (tensors mapped to ``map_location``)."""
    if not is_complete(path):
        raise NotFound(f"checkpoint: {str(path)!r} is missing or incomplete")
    # weights_only: a checkpoint holds tensors, numbers and strings, never pickled code.
    return torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)


class CheckpointStore:
    """The checkpoints of one run directory: save, list, latest, keep the last ``keep``."""

    def __init__(self, directory: Path, keep: int = 3) -> None:
        if keep < 1:
            raise InvalidRequest(f"keep: got {keep}; expected an integer >= 1")
        self.directory = directory
        self.keep = keep

    def save(
        self,
        step: int,
        state: Mapping[str, Any],
        *,
        reason: str = "periodic",
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write a checkpoint for ``step`` atomically, then prune to the last ``keep``."""
        name = checkpoint_dir_name(step)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        write_checkpoint_files(
            tmp, step=step, state=state, reason=reason, metrics=metrics, metadata=metadata
        )
        final = publish(tmp, self.directory, name, move=True)
        self.prune()
        return final

    def checkpoints(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest step first."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            if entry.is_dir() and _CHECKPOINT_DIR.fullmatch(entry.name) and is_complete(entry):
                found.append(checkpoint_info(entry))
        return sorted(found, key=lambda info: info.step)

    def latest(self) -> CheckpointInfo | None:
        """The complete checkpoint with the highest step, or None."""
        complete = self.checkpoints()
        return complete[-1] if complete else None

    def prune(self) -> list[Path]:
        """Remove all but the ``keep`` newest complete checkpoints; return what was removed."""
        complete = self.checkpoints()
        doomed = [info.path for info in complete[: max(0, len(complete) - self.keep)]]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
        return doomed

    def clean_partial(self) -> list[Path]:
        """Remove ``.tmp-*`` directories that crashed saves left behind.

        Call it only when no save of this run is in flight (before a run starts).
        """
        if not self.directory.is_dir():
            return []
        removed = [e for e in self.directory.iterdir() if e.name.startswith(TMP_PREFIX)]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed
