"""The planner's mixed-integer program, built as sparse matrices for HiGHS.

Variables, per GPU type j (G_j GPUs per node) and step t of the horizon (n steps):

* ``R_j[w]``: reserved nodes in term window w (steps ``w*L .. (w+1)*L - 1``, L = term steps),
  the same in every step of the window and paid for every hour of it;
* ``O_j[t]``: on-demand nodes; ``S_j[t]``: spot nodes (``1 - q_j`` of them do work);
* ``u_k[t]``: demand of class k left unmet (only when ``unmet_penalty`` prices it).

Usable supply of type j in step t: ``s_j(t) = G_j (R_j[w(t)] + O_j[t] + (1 - q_j) S_j[t])``.

Constraints, every step t:

1. cover (gpus form, substitution): for every perf level p of a demand class,
   ``sum_{j: perf_j >= p} s_j(t) + sum_{k: perf_k >= p} u_k(t) >= sum_{k: perf_k >= p} D_k(t)``.
   A type serves demand of its own or lower perf, so the sets of types able to serve are nested
   and, by Hall's theorem, these level rows hold exactly when supply can be assigned to demand:
   no assignment variables are needed. Unrated types (perf 0), or every type without
   substitution: ``s_k(t) + u_k(t) >= D_k(t)``. flops form: ``sum_j perf_j s_j(t) + u(t) >=
   D(t)``.
2. ``R_j + O_j + S_j <= max_nodes_j`` (when set); each offer's ``max_nodes`` is a bound.
3. spot share: ``sum_j G_j S_j <= m * sum_j G_j (R_j + O_j + S_j)``, m = ``max_spot_share``.

Objective: reserved ``price * G * hours of the window`` per node per window; on-demand and spot
``price * G * step_hours`` per node per step; unmet ``penalty * step_hours`` per unit.

With whole nodes each cover row also gets mixed-integer rounding cuts (one per distinct
coefficient a of the row): ``sum_i ceil(a_i / a) x_i + u / (a f) >= ceil(b / a)``, f the
fraction of b / a. They hold for every integer plan and make the LP bound much tighter.

:func:`check_caps` compares each cover row's demand with the most the caps allow before any
solving, so an infeasible set of caps is reported naming the cap and the step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, milp

from fastgpu.planner.demand import FLOPS, Demand
from fastgpu.planner.errors import InfeasibleError
from fastgpu.planner.model import GpuTypePlan, PlanSpec

_EPS = 1e-7


@dataclass(frozen=True)
class Cover:
    """One cover row per step: who serves (with what weight per usable GPU), which demand."""

    label: str
    servers: dict[str, float]
    classes: tuple[str, ...]
    rhs: np.ndarray


def cover_groups(spec: PlanSpec, demand: Demand) -> list[Cover]:
    """The cover rows of ``demand`` (already bound to ``spec``), see the module docstring."""
    types = spec.gpu_types
    if spec.demand_unit == "flops":
        servers = {name: gpu.perf for name, gpu in types.items()}
        return [Cover("the demand", servers, (FLOPS,), np.asarray(demand.series[FLOPS]))]
    groups = []
    rated = {k for k in demand.series if types[k].perf > 0}
    for k in sorted(demand.series):
        if k in rated and spec.substitution:
            continue
        groups.append(Cover(f"the demand of {k}", {k: 1.0}, (k,), demand.series[k]))
    if spec.substitution and rated:
        for p in sorted({types[k].perf for k in rated}):
            classes = tuple(sorted(k for k in rated if types[k].perf >= p))
            servers = {j: 1.0 for j, gpu in types.items() if gpu.perf >= p > 0}
            rhs = np.sum(np.vstack([demand.series[k] for k in classes]), axis=0)
            label = (
                f"the demand of {classes[0]}"
                if len(classes) == 1
                else f"the demand of types with perf >= {p:g} ({', '.join(classes)})"
            )
            groups.append(Cover(label, servers, classes, rhs))
    return groups


def node_cap(gpu: GpuTypePlan, offer: str, fixed: int | None = None) -> float:
    """Upper bound of one offer's nodes: its cap, the type's cap, or a fixed reservation."""
    cap = math.inf if gpu.max_nodes is None else float(gpu.max_nodes)
    if offer == "reserved" and fixed is not None:
        return float(min(fixed, cap))
    found = gpu.offers()[offer]  # type: ignore[index]
    if found.max_nodes is not None:
        cap = min(cap, float(found.max_nodes))
    return cap


def usable_cap(gpu: GpuTypePlan, fixed: int | None = None) -> float:
    """Most usable GPUs of a type in one step (spot share aside): non-spot offers first."""
    offers = gpu.offers()
    type_cap = math.inf if gpu.max_nodes is None else float(gpu.max_nodes)
    nonspot = sum(node_cap(gpu, o, fixed) for o in ("reserved", "on_demand") if o in offers)
    nonspot = min(type_cap, nonspot)
    spot = 0.0
    if gpu.spot is not None:
        spot = min(node_cap(gpu, "spot", fixed), type_cap - nonspot)
        spot *= 1.0 - gpu.spot.interruption_rate
    return gpu.gpus_per_node * (nonspot + spot)


def _binding_caps(spec: PlanSpec, names: list[str]) -> str:
    found = []
    for name in names:
        gpu = spec.gpu_types[name]
        if gpu.max_nodes is not None:
            found.append(f"gpu_types.{name}.max_nodes")
        for offer, o in gpu.offers().items():
            if o.max_nodes is not None and (gpu.max_nodes is None or o.max_nodes < gpu.max_nodes):
                found.append(f"gpu_types.{name}.{offer}.max_nodes")
    return ", ".join(found) or "gpu_types"


def check_caps(spec: PlanSpec, demand: Demand, fixed: Mapping[str, int] | None = None) -> None:
    """Raise :class:`InfeasibleError` naming the cap when some step's demand exceeds the most
    the caps allow (only when unmet demand is forbidden)."""
    if spec.unmet_penalty is not None:
        return
    fixed = fixed or {}
    for group in cover_groups(spec, demand):
        caps = {
            j: w * usable_cap(spec.gpu_types[j], fixed.get(j)) for j, w in group.servers.items()
        }
        most = sum(caps.values())
        over = np.flatnonzero(group.rhs > most * (1 + 1e-9) + _EPS)
        if not over.size:
            continue
        t = int(over[0])
        unit = "GPUs" if spec.demand_unit == "gpus" else "perf units"
        parts = ", ".join(
            f"{j}: {'no limit' if math.isinf(c) else f'{c:g}'}" for j, c in caps.items()
        )
        constraint = _binding_caps(spec, list(group.servers))
        raise InfeasibleError(
            f"{group.label} is {group.rhs[t]:g} {unit} at step {t} (hour "
            f"{t * spec.step_hours:g}), but the caps allow at most {most:g} usable ({parts}); "
            f"raise {constraint}, add an offer or a type, or set unmet_penalty to price unmet "
            "demand",
            constraint=constraint,
        )


@dataclass
class TypeCols:
    """Per-step column indices of one GPU type's purchases (``None``: no such offer)."""

    reserved_windows: np.ndarray | None = None
    reserved: np.ndarray | None = None  # per step: the column of its window
    on_demand: np.ndarray | None = None
    spot: np.ndarray | None = None

    def terms(self, gpu: GpuTypePlan) -> list[tuple[np.ndarray, float]]:
        """(columns per step, usable GPUs per node) of every offer present."""
        g = float(gpu.gpus_per_node)
        out = []
        if self.reserved is not None:
            out.append((self.reserved, g))
        if self.on_demand is not None:
            out.append((self.on_demand, g))
        if self.spot is not None and gpu.spot is not None:
            out.append((self.spot, g * (1.0 - gpu.spot.interruption_rate)))
        return out


@dataclass
class Program:
    """Columns and rows of the program; :meth:`matrix` makes the one sparse matrix."""

    spec: PlanSpec
    demand: Demand
    #: Whether the rounding cuts were added (a block of this program gets them too).
    cuts: bool = False
    cols: dict[str, TypeCols] = field(default_factory=dict)
    unmet: dict[str, np.ndarray] = field(default_factory=dict)
    covers: list[Cover] = field(default_factory=list)
    cost_parts: list[np.ndarray] = field(default_factory=list)
    upper_parts: list[np.ndarray] = field(default_factory=list)
    lower_parts: list[np.ndarray] = field(default_factory=list)
    integer_parts: list[np.ndarray] = field(default_factory=list)
    n_vars: int = 0
    rows: list[np.ndarray] = field(default_factory=list)
    cols_: list[np.ndarray] = field(default_factory=list)
    vals: list[np.ndarray] = field(default_factory=list)
    row_lb: list[np.ndarray] = field(default_factory=list)
    row_ub: list[np.ndarray] = field(default_factory=list)
    n_rows: int = 0

    @property
    def n(self) -> int:
        return self.demand.steps

    def variables(
        self, count: int, cost: float | np.ndarray, ub: float, integer: bool, lb: float = 0.0
    ) -> np.ndarray:
        idx = np.arange(self.n_vars, self.n_vars + count)
        self.n_vars += count
        self.cost_parts.append(np.broadcast_to(np.asarray(cost, dtype=float), (count,)))
        self.upper_parts.append(np.full(count, ub))
        self.lower_parts.append(np.full(count, lb))
        self.integer_parts.append(np.full(count, 1 if integer else 0))
        return idx

    def step_rows(self, lb: float | np.ndarray, ub: float | np.ndarray) -> np.ndarray:
        """One row per step; returns their indices."""
        idx = np.arange(self.n_rows, self.n_rows + self.n)
        self.n_rows += self.n
        self.row_lb.append(np.broadcast_to(np.asarray(lb, dtype=float), (self.n,)))
        self.row_ub.append(np.broadcast_to(np.asarray(ub, dtype=float), (self.n,)))
        return idx

    def put(self, rows: np.ndarray, cols: np.ndarray, coef: float | np.ndarray) -> None:
        if np.any(coef != 0.0):
            self.rows.append(rows)
            self.cols_.append(cols)
            self.vals.append(np.broadcast_to(np.asarray(coef, dtype=float), (len(rows),)))

    @property
    def cost(self) -> np.ndarray:
        return np.concatenate(self.cost_parts)

    @property
    def lower(self) -> np.ndarray:
        return np.concatenate(self.lower_parts)

    @property
    def upper(self) -> np.ndarray:
        return np.concatenate(self.upper_parts)

    @property
    def integrality(self) -> np.ndarray:
        return np.concatenate(self.integer_parts)

    def matrix(self) -> sparse.csr_array:
        if not self.rows:
            return sparse.csr_array((self.n_rows, self.n_vars))
        coo = sparse.coo_array(
            (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols_))),
            shape=(self.n_rows, self.n_vars),
        )
        return coo.tocsr()

    def cover_terms(self, group: Cover) -> list[tuple[np.ndarray, float]]:
        """(columns per step, usable weight per node) of every purchase serving ``group``."""
        return [
            (col, w * per_node)
            for j, w in group.servers.items()
            for col, per_node in self.cols[j].terms(self.spec.gpu_types[j])
        ]


def build(
    spec: PlanSpec,
    demand: Demand,
    fixed_reserved: Mapping[str, int] | None = None,
    integer: bool | None = None,
    cuts: bool | None = None,
) -> Program:
    """The program of ``demand`` (bound to ``spec``). ``integer`` (default: the spec's) marks
    node counts integral; ``cuts`` (default: the same) adds the rounding cuts."""
    integer = spec.integer if integer is None else integer
    cuts = integer if cuts is None else cuts
    fixed = dict(fixed_reserved or {})
    prog = Program(spec, demand, cuts)
    n = prog.n
    steps = np.arange(n)
    for name, gpu in spec.gpu_types.items():
        tc = TypeCols()
        g = gpu.gpus_per_node
        if gpu.reserved is not None:
            span = spec.term_steps(name)
            windows = math.ceil(n / span)
            hours = np.array(
                [(min(n, (w + 1) * span) - w * span) * spec.step_hours for w in range(windows)]
            )
            cap = node_cap(gpu, "reserved", fixed.get(name))
            tc.reserved_windows = prog.variables(
                windows,
                gpu.reserved.price_per_hour * g * hours,
                cap,
                integer,
                cap if name in fixed else 0.0,
            )
            tc.reserved = tc.reserved_windows[steps // span]
        if gpu.on_demand is not None:
            price = gpu.on_demand.price_per_hour * g * spec.step_hours
            tc.on_demand = prog.variables(n, price, node_cap(gpu, "on_demand"), integer)
        if gpu.spot is not None:
            price = gpu.spot.price_per_hour * g * spec.step_hours
            tc.spot = prog.variables(n, price, node_cap(gpu, "spot"), integer)
        prog.cols[name] = tc
    if spec.unmet_penalty is not None:
        for k in demand.series:
            prog.unmet[k] = prog.variables(n, spec.unmet_penalty * spec.step_hours, math.inf, False)

    # 1. cover
    prog.covers = cover_groups(spec, demand)
    for group in prog.covers:
        rows = prog.step_rows(group.rhs, math.inf)
        terms = prog.cover_terms(group)
        for col, coef in terms:
            prog.put(rows, col, coef)
        for k in group.classes:
            if k in prog.unmet:
                prog.put(rows, prog.unmet[k], 1.0)
        if cuts:
            _rounding_cuts(prog, group, terms)
    # 2. nodes per type, all offers together (one offer alone: its bound already says it)
    for name, gpu in spec.gpu_types.items():
        if gpu.max_nodes is not None and len(gpu.offers()) > 1:
            rows = prog.step_rows(-math.inf, float(gpu.max_nodes))
            for col, _ in prog.cols[name].terms(gpu):
                prog.put(rows, col, 1.0)
    # 3. spot share
    share = spec.max_spot_share
    if share < 1.0 and any(gpu.spot is not None for gpu in spec.gpu_types.values()):
        rows = prog.step_rows(-math.inf, 0.0)
        for name, gpu in spec.gpu_types.items():
            per_node, tc = float(gpu.gpus_per_node), prog.cols[name]
            if tc.spot is not None:
                prog.put(rows, tc.spot, per_node * (1.0 - share))
            for nonspot in (tc.reserved, tc.on_demand):
                if nonspot is not None:
                    prog.put(rows, nonspot, -per_node * share)
    return prog


def _rounding_cuts(prog: Program, group: Cover, terms: list[tuple[np.ndarray, float]]) -> None:
    """Rounding cuts of one cover row: on the row itself, and, when every spot purchase in it
    is capped, on what the other purchases must cover with all of that spot bought."""
    _rounding_cut(prog, group, terms, group.rhs, max(a for _, a in terms))
    spot_cols = {id(tc.spot) for tc in prog.cols.values() if tc.spot is not None}
    spot_terms = [(col, a) for col, a in terms if id(col) in spot_cols]
    rest = [(col, a) for col, a in terms if id(col) not in spot_cols]
    if not spot_terms or not rest:
        return
    upper = prog.upper
    most = sum(a * float(upper[col[0]]) for col, a in spot_terms)
    if math.isfinite(most) and np.any(group.rhs > most):
        reduced = np.maximum(group.rhs - most, 0.0)
        _rounding_cut(prog, group, rest, reduced, max(a for _, a in rest))
    share = prog.spec.max_spot_share
    if share < 1.0 and set(group.servers) == set(prog.spec.gpu_types):
        # Spot GPUs are at most k = m / (1 - m) times all non-spot GPUs, and this row is
        # served by every type, so its spot covers at most rho k sum_j G_j y_j, rho the most
        # one spot GPU covers here: sum_j (a_j + rho k G_j) y_j >= b (y: non-spot nodes).
        k = share / (1.0 - share)
        rho = max(
            w * (1.0 - gpu.spot.interruption_rate)
            for j, w in group.servers.items()
            if (gpu := prog.spec.gpu_types[j]).spot is not None
        )
        gpus = {
            id(col): float(prog.spec.gpu_types[j].gpus_per_node)
            for j in group.servers
            for col in (prog.cols[j].reserved, prog.cols[j].on_demand)
            if col is not None
        }
        lifted = [(col, a + rho * k * gpus[id(col)]) for col, a in rest]
        _rounding_cut(prog, group, lifted, group.rhs, max(a for _, a in lifted))


def _rounding_cut(
    prog: Program,
    group: Cover,
    terms: list[tuple[np.ndarray, float]],
    rhs: np.ndarray,
    lam: float,
) -> None:
    """The mixed-integer rounding (MIR) cut of the valid row ``sum a_i x_i + u >= b``
    (integer x >= 0, continuous u >= 0) scaled by ``1 / lam``, for every step:
    ``sum (c_i - max(0, f_i - f) / (1 - f)) x_i + u / (lam (1 - f)) >= ceil(b / lam)`` with
    ``c_i = ceil(a_i / lam)``, ``f_i = c_i - a_i / lam``, ``f = ceil(b / lam) - b / lam``."""
    q = rhs / lam
    need = np.ceil(q - 1e-9)
    f = np.clip(need - q, 0.0, 1.0)
    unmet = [prog.unmet[k] for k in group.classes if k in prog.unmet]
    # u's coefficient grows as 1 / (1 - f); where it would be huge the cut is left out.
    if unmet:
        need = np.where(1.0 - f < 1e-4, -math.inf, need)
    f = np.minimum(f, 1.0 - 1e-4)
    rows = prog.step_rows(need, math.inf)
    for col, a in terms:
        c = math.ceil(a / lam - 1e-12)
        prog.put(rows, col, c - np.maximum(0.0, (c - a / lam) - f) / (1.0 - f))
    for col in unmet:
        prog.put(rows, col, 1.0 / (lam * (1.0 - f)))


def highs(
    prog: Program,
    integer: bool,
    time_limit: float,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
) -> OptimizeResult:
    """One HiGHS call on ``prog`` (bounds overridable); an LP unless ``integer``."""
    spec = prog.spec
    constraints = None
    if prog.n_rows:
        constraints = [
            LinearConstraint(
                prog.matrix(), np.concatenate(prog.row_lb), np.concatenate(prog.row_ub)
            )
        ]
    return milp(
        prog.cost,
        constraints=constraints,
        integrality=prog.integrality if integer else None,
        bounds=Bounds(
            prog.lower if lower is None else lower, prog.upper if upper is None else upper
        ),
        options={
            "time_limit": max(time_limit, 0.1),
            "mip_rel_gap": spec.mip_rel_gap,
            "presolve": True,
            "disp": False,
        },
    )


__all__ = [
    "Cover",
    "Program",
    "TypeCols",
    "build",
    "check_caps",
    "cover_groups",
    "highs",
    "usable_cap",
]
