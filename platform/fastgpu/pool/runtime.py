"""Who tenants' processes run as, with which interpreter, and in which directories.

Two isolation modes (``tenant_clusters.isolation``):

* ``os_users`` (the default when the server runs as root): each tenant has its own system user,
  named ``fg`` + 12 hex digits of a hash of (platform id, tenant id), so two platforms on one
  machine never share one. Its directories are 0700 and owned by it; it cannot read the
  server's state dir (0700, root), other tenants' dirs, ``/proc/<pid>/environ`` of others'
  processes, nor signal them.
* ``single_user``: tenants run as the server's user. Their clusters are still separate (own
  token, ports, dirs), but a tenant's code can read every file the server can: the warning in
  :data:`SINGLE_USER_WARNING` is printed at start-up.

A tenant's user must be able to execute the interpreter: the server's own may live under a
0700 home (pyenv). :func:`tenant_python` makes a virtual env from the system's Python of the
same minor version, in a world-readable place, whose one ``.pth`` file adds the server's
site-packages (read-only to tenants): Ray, torch and fastgpu without a second install.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastgpu.errors import ConfigError, FastGPUError
from fastgpu.pool.processes import OsUser

Isolation = Literal["os_users", "single_user"]

SINGLE_USER_WARNING = (
    "tenant isolation is OFF (single_user): every tenant's Ray cluster runs as this user, so a "
    "tenant's job can read the platform's state dir (store, admin token), other tenants' Ray "
    "tokens and checkpoints, and signal their processes. Run the server as root (os_users) "
    "for isolation between tenants."
)


def resolve_isolation(setting: str) -> Isolation:
    """The mode to run in; ``os_users`` without root is a configuration error."""
    root = os.geteuid() == 0
    if setting == "auto":
        return "os_users" if root else "single_user"
    if setting == "os_users" and not root:
        raise ConfigError(
            "tenant_clusters.isolation is os_users, which needs the server to run as root "
            "(to create tenant users); run as root or set isolation: single_user"
        )
    if setting not in ("os_users", "single_user"):
        raise ConfigError(f"tenant_clusters.isolation: unknown mode {setting!r}")
    return setting  # type: ignore[return-value]


def user_name(platform_id: str, tenant_id: str) -> str:
    digest = hashlib.sha256(f"{platform_id}/{tenant_id}".encode()).hexdigest()[:12]
    return f"fg{digest}"


def ensure_user(name: str, comment: str) -> OsUser:
    """The system user ``name``, created (no home, no login shell) if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = None
    if entry is None:
        done = subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                "--comment",
                comment[:60],
                name,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # Two servers racing to create the same user: the loser finds it made.
        if done.returncode not in (0, 9):
            raise FastGPUError(f"cannot create tenant user {name}: {done.stderr.strip()}")
        entry = pwd.getpwnam(name)
    return OsUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def remove_user(name: str) -> None:
    """Delete the tenant's system user (its files must be gone first)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    subprocess.run(["userdel", name], capture_output=True, timeout=60, check=False)


def user_comment(platform_id: str, tenant: str) -> str:
    """The comment (GECOS) of a tenant's user: names its platform, so one platform's users can
    be found and removed without touching another's."""
    return f"fastgpu {platform_id} tenant {tenant}"


def remove_platform_users(platform_id: str) -> list[str]:
    """Delete every tenant user of the platform (after its processes stopped); their names."""
    removed = []
    for entry in pwd.getpwall():
        if entry.pw_gecos.startswith(f"fastgpu {platform_id} tenant "):
            remove_user(entry.pw_name)
            removed.append(entry.pw_name)
    return removed


def private_dir(path: Path, user: OsUser | None) -> Path:
    """``path`` as a 0700 dir owned by ``user`` (created if missing; re-owned if not)."""
    path.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chown(path, user.uid, user.gid)
    path.chmod(0o700)
    return path


def traversable_dir(path: Path) -> Path:
    """``path`` (owned by the server) that others may pass through but not list: 0711."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o711)
    return path


def write_private(path: Path, text: str, user: OsUser | None) -> None:
    """Write a 0600 file owned by ``user``, never readable by anyone else in between."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if user is not None:
            os.fchown(fd, user.uid, user.gid)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True)
class TenantPython:
    """The interpreter tenants' processes run; ``ray_cli`` is how to call ``ray``."""

    executable: str

    def ray(self, *args: str) -> list[str]:
        return [self.executable, "-m", "ray.scripts.scripts", *args]


def _readable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can reach and read ``path`` (every parent +x)."""
    p = path.resolve()
    for parent in [p, *p.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            return False
    return bool(p.stat().st_mode & 0o004) or p.is_dir()


def tenant_python(isolation: Isolation, setting: str | None, base: Path) -> TenantPython:
    """The interpreter for tenants: the server's own in single-user mode; otherwise a small
    virtual env under ``base`` (made once) from the system's Python of the same minor version,
    with the server's site-packages added by a ``.pth`` file."""
    if isolation == "single_user":
        return TenantPython(setting or sys.executable)
    site_packages = Path(sysconfig.get_paths()["purelib"])
    if not _readable_by_others(site_packages):
        raise ConfigError(
            f"tenants' users cannot read the platform's packages at {site_packages}: make the "
            "virtual env and every folder above it world-readable (chmod o+rx), or set "
            "isolation: single_user"
        )
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    system = Path(setting or f"/usr/bin/python{minor}")
    if not system.exists():
        raise ConfigError(
            f"no interpreter for tenants' users: {system} does not exist. Install Python "
            f"{minor} system-wide or set tenant_clusters.python"
        )
    venv = base / f"py{minor}"
    python = venv / "bin" / "python"
    pth = venv / "lib" / f"python{minor}" / "site-packages" / "fastgpu_platform.pth"
    line = f"import site; site.addsitedir({str(site_packages)!r})\n"
    if not (pth.exists() and pth.read_text() == line):
        traversable_dir(base)
        shutil.rmtree(venv, ignore_errors=True)
        done = subprocess.run(
            [str(system), "-m", "venv", "--without-pip", str(venv)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise FastGPUError(f"cannot make the tenants' virtual env: {done.stderr.strip()}")
        pth.write_text(line)
        for p in [venv, *venv.rglob("*")]:
            if p.is_symlink():  # chmod would follow it to the system's interpreter
                continue
            p.chmod(0o755 if p.is_dir() or os.access(p, os.X_OK) else 0o644)
    return TenantPython(str(python))
