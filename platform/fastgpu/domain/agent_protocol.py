"""The messages between the server and a host's agent: one model per shape, used by both.

Agent -> server (bearer: the host's token): :class:`Register` when it starts (and whenever
the server forgets it), :class:`Heartbeat` every ``heartbeat_s``. Server -> agent (signed,
:mod:`fastgpu.pool.signing`): :class:`StartRaylet`, :class:`StopRaylet` and a list request;
each answer is the agent's :class:`RayletReport`. A report carries ``(boot, seq)``: ``seq``
grows with every change the agent makes, so the server keeps the newest report whichever
arrives first (a heartbeat sent before a start and received after it cannot hide the raylet
the start made).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

NAME = r"^[a-z0-9][a-z0-9-]{0,30}$"
ID = r"^[A-Za-z0-9_-]{1,64}$"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunningRaylet(_Msg):
    """A raylet that runs on the agent's host: (tenant, lease, part) and its devices."""

    tenant_id: str = Field(pattern=ID, description="The tenant whose cluster it joined.")
    lease_id: str = Field(pattern=ID, description="The lease it holds devices for.")
    part: int = Field(ge=-1, description="Its first device id (a lease may have several).")
    devices: list[int] = Field(description="CUDA_VISIBLE_DEVICES of the raylet.")


class RayletReport(_Msg):
    """What runs on the host now, as of change ``seq`` of agent run ``boot``."""

    boot: str = Field(max_length=64, description="Random id of this agent process's run.")
    seq: int = Field(ge=0, description="Grows by one with every raylet started or stopped.")
    raylets: list[RunningRaylet] = Field(default_factory=list, max_length=4096)


class Register(_Msg):
    """An agent announcing its host (authenticated by the host's token)."""

    host: str = Field(pattern=NAME, description="The host's name, as `fastgpu host add` gave.")
    gpu_type: str = Field(min_length=1, max_length=63, description="GPU type of its devices.")
    devices: list[int] = Field(min_length=1, max_length=64, description="Device ids it lends.")
    cpus: int = Field(ge=1, description="Logical CPUs of the host.")
    memory_bytes: int = Field(ge=0, description="Physical memory of the host.")
    url: str = Field(max_length=200, description="Where the agent listens (http://host:port).")
    report: RayletReport


class Registered(_Msg):
    """The server's answer: the session key and what to stop."""

    key: str = Field(description="Session HMAC key (hex): signs the server's requests.")
    platform_id: str = Field(
        pattern=ID, description="The server's platform: the agent reports its raylets only."
    )
    heartbeat_s: float
    lost_after_s: float
    #: Raylets to stop now: the host came back after it was written off as lost.
    stale: list[RunningRaylet] = Field(default_factory=list)


class Heartbeat(_Msg):
    host: str = Field(pattern=NAME)
    report: RayletReport


class HeartbeatReply(_Msg):
    state: str = Field(description="The host's state as the server sees it.")
    #: True when the server does not know this agent's session (it restarted): register again.
    reregister: bool = False


class StartRaylet(_Msg):
    """Join a raylet holding ``devices`` to the tenant's cluster at ``address``."""

    platform_id: str = Field(pattern=ID)
    tenant_id: str = Field(pattern=ID)
    lease_id: str = Field(pattern=ID)
    gpu_type: str = Field(min_length=1, max_length=63)
    devices: list[int] = Field(min_length=1, max_length=64)
    cpus: int = Field(ge=0, le=1024)
    address: str = Field(max_length=200, description="The tenant head's GCS (host:port).")
    ray_token: str = Field(
        min_length=16, max_length=200, description="The tenant cluster's Ray token (0600 file)."
    )
    storage: str = Field(max_length=500, description="The tenant's storage dir (shared FS).")


class StopRaylet(_Msg):
    platform_id: str = Field(pattern=ID)
    tenant_id: str = Field(pattern=ID)
    lease_id: str = Field(pattern=ID)
    part: int = Field(ge=-1)
    grace_s: float = Field(default=5.0, ge=0, le=600)
