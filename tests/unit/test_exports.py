"""The public surface is what we meant it to be."""

from __future__ import annotations

import pickle

import fastgpu
from fastgpu import errors


def test_all_is_exactly_the_sdk() -> None:
    assert sorted(fastgpu.__all__) == sorted(
        [
            "Allocator",
            "AuthenticationError",
            "Client",
            "Conflict",
            "Device",
            "FastGPUError",
            "InvalidRequest",
            "Lease",
            "LeaseRejected",
            "NotFound",
            "PermissionDenied",
            "PlatformConfig",
            "Unavailable",
            "WaitTimeout",
            "__version__",
            "load_config",
            "set_device",
        ]
    )
    for name in fastgpu.__all__:
        assert hasattr(fastgpu, name)


def test_errors_pickle_and_round_trip_over_http() -> None:
    for cls in errors.ERRORS_BY_CODE.values():
        exc = cls("gpus: got 0; expected an integer >= 1")
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is cls
        assert back.message == exc.message
        again = errors.error_from_dict(exc.to_dict())
        assert type(again) is cls
        assert isinstance(again, errors.FastGPUError)
