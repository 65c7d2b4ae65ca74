"""Checkpoint layout: atomic save, keep-last-K, latest-complete resume, tenant confinement."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fastgpu.errors import InvalidRequest, NotFound, PermissionDenied
from fastgpu.train.checkpoints import (
    MANIFEST,
    STATE_FILE,
    CheckpointStore,
    checkpoint_dir_name,
    is_complete,
    load_state,
    publish,
    read_manifest,
    resolve_checkpoint,
    run_dir,
    write_checkpoint_files,
)


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((2,), value)}}


def test_run_dir_layout(tmp_path: Path) -> None:
    assert run_dir(tmp_path, "acme", "run-1") == tmp_path.resolve() / "acme" / "runs" / "run-1"


@pytest.mark.parametrize(
    ("tenant", "run"),
    [("acme", "../other"), ("../x", "r"), ("acme", "Run"), ("acme", "1run"), ("acme", "a" * 64),
     ("acme", ""), ("acme", "a/b"), ("ac me", "r")],
)  # fmt: skip
def test_bad_names_refused(tmp_path: Path, tenant: str, run: str) -> None:
    with pytest.raises(InvalidRequest, match="lower-case letters"):
        run_dir(tmp_path, tenant, run)


def test_symlink_escaping_the_tenant_is_refused(tmp_path: Path) -> None:
    (tmp_path / "other" / "runs").mkdir(parents=True)
    (tmp_path / "acme").mkdir()
    os.symlink(tmp_path / "other" / "runs", tmp_path / "acme" / "runs")
    with pytest.raises(PermissionDenied, match="outside the tenant"):
        run_dir(tmp_path, "acme", "r")


def test_resolve_checkpoint_confined_to_tenant(tmp_path: Path) -> None:
    store = CheckpointStore(run_dir(tmp_path, "other", "r"))
    theirs = store.save(5, _state(1.0))
    with pytest.raises(PermissionDenied):
        resolve_checkpoint(tmp_path, "acme", theirs)
    with pytest.raises(PermissionDenied):
        resolve_checkpoint(tmp_path, "acme", "../other/runs/r/" + theirs.name)
    assert resolve_checkpoint(tmp_path, "other", f"runs/r/{theirs.name}") == theirs
    with pytest.raises(NotFound):
        resolve_checkpoint(tmp_path, "other", "runs/r/step-000000099")


def test_keep_last_k_and_latest(tmp_path: Path) -> None:
    store = CheckpointStore(run_dir(tmp_path, "acme", "r"), keep=2)
    for step in (10, 20, 30, 40):
        store.save(step, _state(step), metrics={"loss": 1.0 / step})
    kept = store.checkpoints()
    assert [c.step for c in kept] == [30, 40]
    latest = store.latest()
    assert latest is not None
    assert latest.step == 40
    assert latest.metrics == {"loss": 0.025}
    assert torch.equal(load_state(latest.path)["model"]["w"], torch.full((2,), 40.0))
    assert not [p for p in store.directory.iterdir() if p.name.startswith(".tmp-")]


def test_names_sort_like_steps() -> None:
    assert checkpoint_dir_name(9) < checkpoint_dir_name(10) < checkpoint_dir_name(100)
    with pytest.raises(InvalidRequest):
        checkpoint_dir_name(-1)


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="keep"):
        CheckpointStore(tmp_path, keep=0)


def test_crash_mid_save_never_becomes_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(run_dir(tmp_path, "acme", "r"), keep=3)
    store.save(10, _state(10))

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)  # dies between writing and publishing
    with pytest.raises(OSError, match="disk full"):
        store.save(20, _state(20))
    monkeypatch.undo()
    latest = store.latest()
    assert latest is not None
    assert latest.step == 10
    leftovers = store.clean_partial()
    assert len(leftovers) == 1
    assert leftovers[0].name.startswith(".tmp-step-000000020")
    assert not leftovers[0].exists()


def test_truncated_or_manifestless_directories_are_ignored(tmp_path: Path) -> None:
    store = CheckpointStore(run_dir(tmp_path, "acme", "r"), keep=5)
    good = store.save(10, _state(10))
    # A copy by a tool that does not rename: the state file is cut short.
    torn = store.directory / checkpoint_dir_name(30)
    write_checkpoint_files(torn, step=30, state=_state(30))
    with (torn / STATE_FILE).open("r+b") as f:
        f.truncate(10)
    # A directory without a manifest (copy interrupted before it).
    bare = store.directory / checkpoint_dir_name(40)
    bare.mkdir()
    (bare / STATE_FILE).write_bytes(b"x")
    assert not is_complete(torn)
    assert not is_complete(bare)
    assert [c.path for c in store.checkpoints()] == [good]
    with pytest.raises(NotFound):
        load_state(torn)


def test_publish_replaces_an_existing_step_whole(tmp_path: Path) -> None:
    parent = tmp_path / "run"
    first = write_checkpoint_files(tmp_path / "a", step=5, state=_state(1.0), reason="periodic")
    second = write_checkpoint_files(tmp_path / "b", step=5, state=_state(2.0), reason="preemption")
    publish(first, parent, "step-000000005")
    final = publish(second, parent, "step-000000005")
    manifest = json.loads((final / MANIFEST).read_text())
    assert manifest["reason"] == "preemption"
    assert torch.equal(load_state(final)["model"]["w"], torch.full((2,), 2.0))
    assert sorted(p.name for p in parent.iterdir()) == ["step-000000005"]


def test_unknown_reason_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="reason"):
        write_checkpoint_files(tmp_path / "x", step=1, state=_state(0), reason="whim")


def test_resume_takes_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    from fastgpu.train.loop import newest_checkpoint

    store = CheckpointStore(tmp_path / "run", keep=5)
    s2 = store.save(2, {"w": torch.zeros(1)})
    s4 = store.save(4, {"w": torch.ones(1)})
    # Ray Train recorded step 2; step 4 reached the disk before a worker died: resume at 4.
    assert newest_checkpoint(s2, store.latest()) == s4
    assert newest_checkpoint(s4, store.latest()) == s4
    assert newest_checkpoint(None, store.latest()) == s4
    assert newest_checkpoint(s2, None) == s2
    assert newest_checkpoint(None, None) is None
    # An incomplete checkpoint Ray names is passed over for the disk's.
    (s2 / next(iter(read_manifest(s2)["files"]))).unlink()
    assert newest_checkpoint(s2, None) is None
