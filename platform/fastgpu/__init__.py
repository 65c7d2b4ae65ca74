"""FastGPU: an elastic, multi-tenant, metered GPU platform on Ray."""

from fastgpu.config import PlatformConfig, load_config
from fastgpu.errors import (
    AuthenticationError,
    Conflict,
    FastGPUError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Conflict",
    "FastGPUError",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "PlatformConfig",
    "Unavailable",
    "__version__",
    "load_config",
]
