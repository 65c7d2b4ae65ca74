"""FastGPU: an elastic, multi-tenant, metered GPU platform on Ray.

The public surface is the SDK (:class:`Client`, :class:`Allocator`, :class:`Lease`), the
configuration model and the error hierarchy; everything else is internal.
"""

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
from fastgpu.sdk import Allocator, Client, Lease

__version__ = "0.1.0"

__all__ = [
    "Allocator",
    "AuthenticationError",
    "Client",
    "Conflict",
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
]
