"""FastGPU: an elastic, multi-tenant, metered GPU platform on Ray.

The public surface is the SDK (:class:`Client`, :class:`Lease`; the seed's :class:`Allocator`,
:class:`Device` and :func:`set_device`), the configuration model and the error hierarchy;
everything else is internal.
"""

from fastgpu.allocator import Allocator, Device, set_device
from fastgpu.config import PlatformConfig, load_config
from fastgpu.errors import (
    AuthenticationError,
    Conflict,
    FastGPUError,
    InvalidRequest,
    LeaseRejected,
    NotFound,
    PermissionDenied,
    Unavailable,
    WaitTimeout,
)
from fastgpu.sdk import Client, Lease

__version__ = "0.1.0"

__all__ = [
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
