"""fastgpu.train.run in local mode (workers=0: in-process, no Ray cluster) and lease placement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fastgpu.train as ft
from fastgpu.errors import InvalidRequest
from fastgpu.train import classifier


def test_public_surface() -> None:
    assert sorted(ft.__all__) == sorted(
        ["CheckpointInfo", "CheckpointStore", "LeaseBinding", "LeaseRun", "MixedPrecision",
         "Placement", "Precision", "Resumed", "TrainLoop", "TrainOutcome", "TrainSpec",
         "acquire_lease", "build_trainer", "mixed_precision", "placement_for_lease", "run",
         "run_dir", "run_on_lease"]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("workers", "kwargs", "expected"),
    [
        ((2, 8), {"max_gpus": 4}, (2, 4)),
        ((1, 4), {"max_gpus": 8}, (1, 4)),
        (6, {"max_gpus": 4}, 4),
        ((1, 4), {"max_gpus": 4, "gpus_per_worker": 2}, (1, 2)),
        ((2, 4), {}, (2, 4)),
    ],
)
def test_worker_range_capped_by_lease(workers, kwargs, expected) -> None:
    assert ft.placement_for_lease(workers, **kwargs).num_workers == expected


def test_lease_nodes_become_label_selector() -> None:
    one = ft.placement_for_lease((1, 2), node_ids=["b", "b"])
    assert one.label_selector == {"ray.io/node-id": "b"}
    two = ft.placement_for_lease((1, 2), node_ids=["b", "a"], label_selector={"zone": "x"})
    assert two.label_selector == {"zone": "x", "ray.io/node-id": "in(a,b)"}
    assert ft.placement_for_lease(2).label_selector is None


@pytest.mark.parametrize(
    ("workers", "kwargs", "match"),
    [
        ((4, 8), {"max_gpus": 2}, "min 4 needs 4 GPUs"),
        (1, {"node_ids": []}, "empty list"),
        (1, {"node_ids": ["a,b"]}, "Ray node id"),
        (1, {"node_ids": ["a"], "label_selector": {"ray.io/node-id": "b"}}, "only one"),
    ],
)
def test_bad_placements_refused(workers, kwargs, match) -> None:
    with pytest.raises(InvalidRequest, match=match):
        ft.placement_for_lease(workers, **kwargs)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"run_name": "../x"}, "run_name"),
        ({"workers": (3, 2)}, "workers"),
        ({"precision": "fp8"}, "precision"),
        ({"keep": 0}, "keep"),
        ({"surprise": 1}, "unknown field"),
    ],
)
def test_spec_validation_messages(tmp_path: Path, fields, match) -> None:
    base = {"tenant": "acme", "run_name": "r", "storage_root": str(tmp_path), "workers": 0}
    with pytest.raises(InvalidRequest, match=match):
        ft.run("digits-classifier", **{**base, **fields})


def test_unknown_builtin_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="digits-classifier"):
        ft.run("nope", tenant="acme", run_name="r", storage_root=str(tmp_path), workers=0)


def _run(root: Path, epochs: int, **extra):
    return ft.run(
        "digits-classifier",
        workers=0,
        tenant="acme",
        run_name="local",
        storage_root=str(root),
        checkpoint_every=10,
        keep=2,
        config={"epochs": epochs},
        **extra,
    )


def test_local_run_checkpoints_resumes_and_deploys(tmp_path: Path) -> None:
    first = _run(tmp_path, epochs=2)
    assert first.metrics["step"] == 46  # 1437 samples / 64 per batch = 23 steps per epoch
    assert first.run_dir == tmp_path.resolve() / "acme" / "runs" / "local"
    store = ft.CheckpointStore(first.run_dir, keep=2)
    steps = [c.step for c in store.checkpoints()]
    assert steps == [40, 46]
    final = store.latest()
    assert final is not None
    assert final.reason == "final"
    meta = final.metadata
    assert meta["label_names"] == [str(i) for i in range(10)]
    assert len(meta["normalization"]["mean"]) == 64
    assert meta["model_config"]["num_classes"] == 10

    # Resubmitting the same run name continues from the final checkpoint.
    second = _run(tmp_path, epochs=3)
    assert second.result.return_value["start_step"] == 46
    assert second.metrics["step"] == 69
    assert second.metrics["test_accuracy"] > 0.85

    # The final checkpoint is all a deployment needs.
    model, metadata = classifier.load_for_inference(second.checkpoint)
    data = classifier.load_digits_split()
    raw = np.asarray(data.x_test) * np.asarray(data.std) + np.asarray(data.mean)
    predicted = classifier.predict(model, metadata, raw)
    accuracy = np.mean([p == str(int(y)) for p, y in zip(predicted, data.y_test, strict=True)])
    assert accuracy == pytest.approx(second.metrics["test_accuracy"], abs=1e-6)


def test_resume_mid_epoch_skips_seen_batches(tmp_path: Path) -> None:
    _run(tmp_path, epochs=1)  # 23 steps; final checkpoint at 23 (epoch boundary)
    store = ft.CheckpointStore(tmp_path / "acme" / "runs" / "local", keep=5)
    for info in store.checkpoints():
        if info.step != 20:
            import shutil

            shutil.rmtree(info.path)
    resumed = _run(tmp_path, epochs=1)
    out = resumed.result.return_value
    assert out["start_step"] == 20
    assert out["steps"] == 23  # 3 batches left in epoch 0, not a full epoch again


def test_deadline_checkpoints_and_stops_then_resubmission_continues(tmp_path: Path) -> None:
    import time

    stopped = _run(tmp_path, epochs=2, stop_at=time.time(), stop_margin_s=0, report_every=5)
    out = stopped.result.return_value
    assert out["stopped"] is True
    assert out["steps"] == 5  # the first deadline check
    latest = ft.CheckpointStore(stopped.run_dir).latest()
    assert latest is not None
    assert (latest.step, latest.reason) == (5, "stop")
    resumed = _run(tmp_path, epochs=2)
    assert resumed.result.return_value["start_step"] == 5
    assert resumed.metrics["step"] == 46
