"""The import direction inside ``platform/fastgpu`` (DESIGN.md, "Layout"), checked on the AST.

Layers, lowest first::

    base + domain  <-  scheduler, planner, sim  <-  store, pool  <-  controller  <-  service  <- api
                                                   sdk (HTTP only)  <-  cli, train, tune, serve
                                     controller  <-  metrics  <-  server (entry modules only)

*base* is the modules every layer may use: ``errors``, ``validation``, ``timeutil``, ``config``,
``auth``. The rules, one per layer (a module's layer is the first name under ``fastgpu``):

* ``domain`` and base import no fastgpu layer but each other;
* ``scheduler``, ``planner``, ``sim`` (pure) import only domain and base, and each other except
  that nothing below ``sim`` imports ``sim`` (the simulator replays the policies, not the other
  way round); no ``ray``, no ``fastgpu.store``;
* ``store`` imports only domain and base (no scheduler, controller, ..., no ``ray``);
* ``pool`` (hosts, tenants' Ray processes) imports only domain and base; Ray is its business;
* only ``controller`` and the entry modules (``local``, ``server``) import ``pool``;
* ``controller`` imports no ``service``, ``api``, ``sdk``, ``cli``;
* ``service`` imports no ``api``, ``sdk``, ``cli``; of ``fastgpu.store`` it may import record
  types only (:data:`STORE_RECORD_TYPES`, e.g. ``from fastgpu.store import TenantRecord``),
  never the :class:`Store` or a submodule: services reach the store through the controller;
* ``api`` imports no ``controller`` and no ``store``;
* ``metrics`` (Prometheus views of the controller) imports no ``service``, ``api``, ``sdk``,
  ``cli``; only the entry modules (``server``, ``local``) import it: the API serves the text it
  renders through a callable it is given;
* ``sdk`` imports no ``service``, ``controller``, ``store``, ``api``, and ``ray`` only inside a
  function (never at module level: the SDK must import without Ray);
* the integrations (``train``, ``tune``, ``serve``) import no ``service``, ``controller``,
  ``store``, ``api``: they speak to the platform through ``sdk``;
* ``console`` (the web console's static files and the ASGI app serving them) imports no
  fastgpu layer and no ``ray``: its numbers are the browser's own API calls; only ``api``
  mounts it;
* no layer below ``api`` imports the ``fastgpu`` package itself (it loads the SDK).

What counts: every ``import``/``from ... import`` anywhere in a module (functions included: a
lazy import is still a dependency), relative ones resolved. What does not: imports under
``if TYPE_CHECKING:``, which exist for annotations only; they are exempt from the rules marked
``runtime_only`` below (``service`` -> ``store``, ``api`` -> ``controller``/``store``, where a
type in a signature is the point). A type-only import that goes *up* (e.g. ``service`` naming a
type of ``api``) still counts: the type lives in the wrong layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "fastgpu"
BASE = frozenset({"errors", "validation", "timeutil", "config", "auth"})
PURE = frozenset({"scheduler", "planner", "sim", "endpoints", "registry"})
INTEGRATIONS = frozenset({"train", "tune", "serve"})
#: What a service may import from ``fastgpu.store`` at run time.
STORE_RECORD_TYPES = frozenset({"TenantRecord", "TokenRecord", "UsageRow"})
#: The top-level names under ``fastgpu``; a new one must be placed in a layer here.
KNOWN = (
    BASE
    | PURE
    | INTEGRATIONS
    | {"domain", "store", "pool", "controller", "service", "api", "sdk", "cli", "metrics"}
    | {"console"}
    | {"allocator", "cli_plan", "cli_sim", "cli_models", "cli_sweeps", "sdk_registry", "sdk_sweeps"}
    | {"demo", "demo_budget", "demo_isolation", "demo_tune", "local"}
    | {"server"}
    | {"agent", "cli_hosts", "sdk_hosts"}
    | {"sdk_base", "sdk_endpoints", "sdk_tenants", "sdk_usage"}
)
#: Violations the code has today, each to be fixed and then removed from this list (the test
#: fails both on a new violation and on one listed here that is gone).
KNOWN_VIOLATIONS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. fastgpu.service.leases
    target: str  # the imported module, e.g. fastgpu.store
    names: tuple[str, ...]  # for ``from target import a, b``; () for ``import target``
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``
    module_level: bool  # not inside a function

    @property
    def layer(self) -> str:
        return _layer(self.source)

    @property
    def target_layer(self) -> str | None:
        """The fastgpu layer imported ("" for the package itself), or None if not fastgpu."""
        parts = self.target.split(".")
        if parts[0] != "fastgpu":
            return None
        return parts[1] if len(parts) > 1 else ""

    @property
    def key(self) -> str:
        """What it is, without the line number (which moves with unrelated edits)."""
        kind = " (type-only)" if self.type_only else ""
        return f"{self.source}{kind} imports {self.target}"


def _layer(module: str) -> str:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    return "sdk" if name.startswith("sdk_") else name  # the SDK's mixins (sdk_registry, ...)


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(
    node: ast.AST, type_only: bool, in_function: bool
) -> Iterator[tuple[ast.AST, bool, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, True, in_function
                yield from _walk(stmt, True, in_function)
            for stmt in child.orelse:
                yield stmt, type_only, in_function
                yield from _walk(stmt, type_only, in_function)
            continue
        func = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield child, type_only, in_function
        yield from _walk(child, type_only, in_function or func)


def imports_of(path: Path) -> list[Import]:
    source = _module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node, type_only, in_function in _walk(tree, False, False):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(
                    Import(source, alias.name, (), node.lineno, type_only, not in_function)
                )
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = tuple(a.name for a in node.names)
            if not node.module and node.level:
                # ``from . import x``: each name may be a submodule.
                for name in names:
                    found.append(
                        Import(
                            source, f"{target}.{name}", (), node.lineno, type_only, not in_function
                        )
                    )
                continue
            found.append(Import(source, target, names, node.lineno, type_only, not in_function))
    return found


def all_imports() -> list[Import]:
    return [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in imports_of(path)]


def violation(imp: Import) -> str | None:
    """Why ``imp`` breaks the layering (see the module docstring), or None."""
    layer, target = imp.layer, imp.target_layer
    is_ray = imp.target == "ray" or imp.target.startswith("ray.")
    if target is None and not is_ray:
        return None
    if target == layer and target != "":
        return None  # within a layer
    if target == "pool" and layer not in {
        "controller",
        "local",
        "server",
        "demo",
        "demo_isolation",
        "agent",
    }:
        return "only the controller (and the entry modules) drive the pool"
    if target == "metrics" and layer not in {"local", "server"}:
        return "only the entry modules wire metrics"
    if target == "console" and layer != "api":
        return "only the api mounts the console"

    if layer == "domain" or layer in BASE:
        if is_ray:
            return "domain and base modules do not use Ray"
        if target not in BASE | {"domain"}:
            return "domain and base import only each other"
    elif layer in PURE:
        if is_ray:
            return f"{layer} is pure: no Ray"
        if target == "sim":
            return "nothing below sim imports sim"
        if target not in BASE | PURE | {"domain"}:
            return f"{layer} imports only domain, base and the other pure layers"
    elif layer == "store":
        if is_ray:
            return "store does not use Ray"
        if target not in BASE | {"domain"}:
            return "store imports only domain and base"
    elif layer == "pool":
        if target not in BASE | {"domain"} and not is_ray:
            return "pool imports only domain and base"
    elif layer == "agent":
        if target not in BASE | {"domain", "pool"} and not is_ray:
            return "agent (a GPU host's daemon) imports only pool, domain and base"
    elif layer == "controller":
        if target in {"service", "api", "sdk", "cli", ""}:
            return "controller is below service, api, sdk and cli"
    elif layer == "metrics":
        if target in {"service", "api", "sdk", "cli", ""}:
            return "metrics reads the controller; it is below service, api, sdk and cli"
    elif layer == "service":
        if target in {"api", "sdk", "cli", ""}:
            return "service is below api, sdk and cli"
        if target == "store" and not imp.type_only:
            records = imp.names and set(imp.names) <= STORE_RECORD_TYPES
            if imp.target != "fastgpu.store" or not records:
                return (
                    "service reaches the store through the controller; it may import only "
                    f"record types ({', '.join(sorted(STORE_RECORD_TYPES))}) from fastgpu.store"
                )
    elif layer == "api":
        if target in {"controller", "store"} and not imp.type_only:
            return "api calls services, not the controller or the store"
    elif layer == "console":
        return "the console serves static files; it imports no fastgpu layer and no Ray"
    elif layer == "sdk":
        if target in {"service", "controller", "store", "api"}:
            return "sdk speaks HTTP only"
        if is_ray and imp.module_level and not imp.type_only:
            return "sdk imports Ray only inside functions"
    elif layer in INTEGRATIONS and target in {"service", "controller", "store", "api"}:
        return f"{layer} runs in a tenant's cluster and uses sdk only"
    return None


def violations() -> dict[str, str]:
    """``{key: "line N: why"}`` of every import against the layering."""
    out = {}
    for imp in all_imports():
        why = violation(imp)
        if why is not None:
            out[imp.key] = f"line {imp.line}: {why}"
    return out


def test_every_top_level_module_has_a_layer() -> None:
    names = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    }
    names.discard("__init__")
    assert names - KNOWN == set(), "place the new module in a layer of test_imports.py"


def test_imports_follow_the_layers() -> None:
    found = violations()
    new = {k: v for k, v in found.items() if k not in KNOWN_VIOLATIONS}
    assert new == {}, "imports against the layering:\n" + "\n".join(
        f"  {k}: {v}" for k, v in sorted(new.items())
    )
    fixed = KNOWN_VIOLATIONS - set(found)
    assert not fixed, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(fixed)}"


# ==== the checker itself ========================================================================
def _check(tmp_path: Path, module: str, code: str) -> list[str]:
    """Violations of one synthetic module ``fastgpu.<module>``."""
    parts = module.split(".")
    path = tmp_path.joinpath("fastgpu", *parts[:-1], parts[-1] + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code)
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "fastgpu"
    try:
        return [f"{imp.line}" for imp in imports_of(path) if violation(imp)]
    finally:
        PACKAGE = saved


@pytest.mark.parametrize(
    ("module", "code", "bad_lines"),
    [
        ("domain.x", "from fastgpu.errors import X\nfrom fastgpu.store import Store\n", ["2"]),
        ("domain.x", "def f():\n    import ray\n", ["2"]),
        ("scheduler.x", "from fastgpu.domain.lease import Lease\nimport fastgpu.store\n", ["2"]),
        ("scheduler.x", "from fastgpu.sim import engine\n", ["1"]),
        ("sim.x", "from fastgpu.scheduler import Policy\nfrom ray import util\n", ["2"]),
        ("store.x", "from fastgpu.controller.loop import Controller\n", ["1"]),
        ("controller.x", "from fastgpu.store import Store\nfrom fastgpu.service import S\n", ["2"]),
        ("controller.x", "import fastgpu\n", ["1"]),
        ("pool.x", "import ray\nfrom fastgpu.config import X\nfrom fastgpu.store import S", ["3"]),
        ("service.x", "from fastgpu.pool.hosts import Host\n", ["1"]),
        ("controller.x", "from fastgpu.pool.hosts import Host\n", []),
        (
            "service.x",
            "from fastgpu.store import TenantRecord, TokenRecord\n"
            "from fastgpu.store import Store\n"
            "from fastgpu.store.sql import TenantRecord\n"
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from fastgpu.store import Store\n"
            "    from fastgpu.api.app import App\n",
            ["2", "3", "7"],
        ),
        ("service.x", "from ..store import Store\n", ["1"]),
        ("service.x", "import fastgpu.store\n", ["1"]),
        ("service.x", "from . import auth\nfrom .. import store\n", ["2"]),
        (
            "api.x",
            "import typing\n"
            "if typing.TYPE_CHECKING:\n"
            "    from fastgpu.controller.loop import Controller\n"
            "from fastgpu.store import TenantRecord\n",
            ["4"],
        ),
        ("sdk.py", "import ray\ndef f():\n    import ray\n", ["1"]),
        ("sdk.py", "def f():\n    from fastgpu.service import models\n", ["2"]),
        ("train.x", "from fastgpu.sdk import Client\nfrom fastgpu.store import Store\n", ["2"]),
        (
            "metrics",
            "from fastgpu.controller.loop import C\nfrom fastgpu.service import S\n",
            ["2"],
        ),
        ("api.x", "from fastgpu.metrics import PlatformMetrics\n", ["1"]),
        ("server", "from fastgpu.metrics import install_metrics\n", []),
        ("api.app", "from fastgpu.console import mount_console\n", []),
        ("service.x", "from fastgpu.console import mount_console\n", ["1"]),
        ("console", "from starlette.types import Scope\nfrom fastgpu.auth import A\n", ["2"]),
    ],
)
def test_the_checker(tmp_path: Path, module: str, code: str, bad_lines: list[str]) -> None:
    if module == "sdk.py":
        module = "sdk"
    assert _check(tmp_path, module, code) == bad_lines
