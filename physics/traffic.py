r"""Freeway traffic: the cell-transmission model (CTM) of a corridor with on- and off-ramps, queues and incidents."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from twinjax.model.dynamics import AbstractDiscreteDynamics


def _median(a, b, c):
    """The middle value of three (elementwise)."""
    return jnp.maximum(jnp.minimum(a, b), jnp.minimum(jnp.maximum(a, b), c))


def _concrete(value) -> bool:
    return not isinstance(value, jax.core.Tracer)


class CTMFlows(eqx.Module):
    """The flows (veh/h) of one CTM step, held constant over the step.

    Arguments:
        entrance: flow from the upstream point queue into cell 0, shape ``()``.
        mainline: mainline flow into each cell (``mainline[0] = entrance``) and, last, the exit flow leaving the
            corridor downstream: shape ``(n_cells + 1,)``; ``mainline[i]`` crosses the upstream boundary of cell ``i``.
        on_ramp: flow from each on-ramp queue into its cell, shape ``(n_on,)``.
        off_ramp: flow leaving through each off-ramp, shape ``(n_off,)``.
        cell_outflow: total flow leaving each cell (mainline downstream plus its off-ramp), shape ``(n_cells,)``.
    """

    entrance: Float[Array, ""]
    mainline: Float[Array, " interface"]
    on_ramp: Float[Array, " on_ramp"]
    off_ramp: Float[Array, " off_ramp"]
    cell_outflow: Float[Array, " cell"]


class CellTransmissionModel(AbstractDiscreteDynamics):
    r"""Cell-transmission model (Daganzo 1994) of a freeway corridor: the Godunov scheme for the LWR kinematic wave.

    The corridor is ``n_cells`` cells of length $\Delta x$ (km) stepped every $\Delta t$ (h). Each cell has the
    triangular (or, with a lower capacity, trapezoidal) fundamental diagram
    $q(\rho) = \min(v_f \rho,\ Q_i,\ w(\rho_{jam} - \rho))$ and offers the sending (demand) and receiving (supply)
    functions

    $$ S_i = \min(v_f \rho_i,\ Q_i), \qquad R_i = \min(Q_i,\ w(\rho_{jam} - \rho_i)). $$

    **State** ``x`` (length ``n_cells + n_on + 4``)::

        [ρ_0 … ρ_{n−1} (veh/km),  q_entrance (veh),  q_ramp_1 … q_ramp_m (veh),
         N_in (veh),  N_out (veh),  N_off (veh)]

    the cell densities, the point queue at the upstream entrance, one point queue per on-ramp, and the cumulative
    counts of vehicles that arrived (upstream demand plus on-ramp demands), left downstream, and left through the
    off-ramps. Vehicles are conserved exactly: :meth:`vehicles` ``(x) = Σ ρ_i Δx + queues`` satisfies
    ``vehicles(x_k) = vehicles(x_0) + N_in − N_out − N_off`` (the counters start at zero in :meth:`initial_state`).

    **Control** ``u = [d, r_1 … r_m]`` or ``u = [d, r_1 … r_m, c_0 … c_{n−1}]``: upstream demand ``d`` (veh/h),
    on-ramp demands ``r_j`` (veh/h) and, optionally, a remaining-capacity factor ``c_i ∈ [0, 1]`` per cell (1 when
    omitted), so the capacity in the step is $c_i Q_i$. Time-varying incidents go through ``u``
    (:func:`incident_capacity_factors` builds the factor series); a permanent capacity change is
    :meth:`with_incident`. The time ``t`` is not used.

    **Boundaries and nodes.** A point queue of demand $D = d + q/\Delta t$ feeds cell 0 (each on-ramp queue likewise
    feeds its cell with demand $D_r = r + q_r/\Delta t$), so a queue grows only by what the road cannot take.
    The exit flow is $\min((1-\beta_{n-1}) S_{n-1},\ R_{down})$ with the downstream supply $R_{down}$
    (default: the last cell's nominal capacity).

    - *Merge* (on-ramp into cell ``i``, with mainline sending $S_m$ from upstream and ramp demand $D_r$):
      Daganzo's (1995) priority merge with ramp share ``p`` (``ramp_priority``): if $S_m + D_r \le R_i$ both flow
      in full; otherwise the mainline gets $\mathrm{mid}(S_m, R_i - D_r, (1-p) R_i)$ and the ramp
      $\mathrm{mid}(D_r, R_i - S_m, p R_i)$, which fill $R_i$ exactly. ``p = 0`` (default) is mainline priority:
      the ramp gets $\min(D_r, R_i - S_m)^+$, i.e. "ramp flow = min(ramp demand, remaining supply)".
    - *Diverge* (off-ramp at cell ``i`` with split ratio $\beta_i$; the off-ramp has unlimited supply): Daganzo's FIFO
      rule — the cell's total outflow is $\min(S_i, R_{i+1}/(1-\beta_i))$ (after the merge into ``i+1``), a share
      $\beta_i$ of it exits, so a congested mainline also holds back the exiting vehicles.

    With $\max(v_f, w) \Delta t \le \Delta x$ (CFL) the densities stay in $[0, \rho_{jam}]$ and no flow exceeds a
    capacity.

    Arguments:
        n_cells: number of cells ``n`` (static).
        cell_length_km: cell length ``Δx`` (km). Default 0.5.
        dt_h: time step ``Δt`` (h). Default ``Δx / v_f`` (Courant number 1, the exact free-flow shift).
        free_flow_speed_kmh: free-flow speed ``v_f`` (km/h). Default 100.
        wave_speed_kmh: congestion (backward) wave speed ``w`` (km/h). Default 25.
        jam_density_veh_km: jam density ``ρ_jam`` (veh/km). Default 300 (three lanes of 100 veh/km).
        capacity_veh_h: capacity ``Q_i`` (veh/h), a scalar or one value per cell. Default 6000 (three lanes), which
            makes the diagram exactly triangular with critical density 60 veh/km.
        downstream_supply_veh_h: supply ``R_down`` at the downstream end (veh/h). Default ``capacity_veh_h[-1]``.
        on_ramp_cells: indices of the cells the on-ramps feed (distinct; static). Default none.
        off_ramp_cells: indices of the cells with an off-ramp (distinct; static). Default none.
        off_ramp_split: split ratio ``β_j ∈ [0, 1)`` of each off-ramp, same length as ``off_ramp_cells``.
        ramp_priority: merge share ``p ∈ [0, 1]`` of the on-ramps under congestion. Default 0 (mainline priority).

    Raises:
        ValueError: naming the argument, for a CFL violation (``dt_h``), a non-positive length, speed or density, a
            capacity of the wrong shape or not positive, a ramp index out of range or repeated, a split ratio outside
            ``[0, 1)`` or of the wrong length, or a priority outside ``[0, 1]``.

    Example:
        ```python
        ctm = CellTransmissionModel(20, on_ramp_cells=(8,), off_ramp_cells=(12,), off_ramp_split=(0.1,))
        x0 = ctm.initial_state()
        us = jnp.tile(jnp.array([4000.0, 500.0]), (240, 1))     # 4000 veh/h upstream, 500 veh/h on the ramp, 1.2 h
        xs = ctm.simulate(x0, us)                               # (241, state)
        ctm.travel_metrics(xs, us)                              # vehicle-hours, vehicle-km, delay
        ```

    References:
        C. F. Daganzo, "The cell transmission model: a dynamic representation of highway traffic consistent with the
        hydrodynamic theory", Transp. Res. B 28(4), 1994; C. F. Daganzo, "The cell transmission model, part II:
        network traffic", Transp. Res. B 29(2), 1995 (merges and diverges); M. J. Lighthill and G. B. Whitham, "On
        kinematic waves II", Proc. R. Soc. A 229, 1955; P. I. Richards, "Shock waves on the highway", Oper. Res.
        4(1), 1956.
    """

    n_cells: int = eqx.field(static=True)
    on_ramp_cells: tuple[int, ...] = eqx.field(static=True)
    off_ramp_cells: tuple[int, ...] = eqx.field(static=True)
    cell_length_km: Float[Array, ""]
    dt_h: Float[Array, ""]
    free_flow_speed_kmh: Float[Array, ""]
    wave_speed_kmh: Float[Array, ""]
    jam_density_veh_km: Float[Array, ""]
    capacity_veh_h: Float[Array, " cell"]
    downstream_supply_veh_h: Float[Array, ""]
    off_ramp_split: Float[Array, " off_ramp"]
    ramp_priority: Float[Array, ""]

    def __init__(
        self,
        n_cells: int,
        *,
        cell_length_km: Float[ArrayLike, ""] = 0.5,
        dt_h: Float[ArrayLike, ""] | None = None,
        free_flow_speed_kmh: Float[ArrayLike, ""] = 100.0,
        wave_speed_kmh: Float[ArrayLike, ""] = 25.0,
        jam_density_veh_km: Float[ArrayLike, ""] = 300.0,
        capacity_veh_h: Float[ArrayLike, "*cell"] = 6000.0,
        downstream_supply_veh_h: Float[ArrayLike, ""] | None = None,
        on_ramp_cells: tuple[int, ...] = (),
        off_ramp_cells: tuple[int, ...] = (),
        off_ramp_split: Float[ArrayLike, " off_ramp"] | tuple[float, ...] = (),
        ramp_priority: Float[ArrayLike, ""] = 0.0,
    ):
        if not isinstance(n_cells, int | np.integer) or n_cells < 1:
            raise ValueError(f"`n_cells` must be a positive integer, got {n_cells!r}.")
        self.n_cells = int(n_cells)

        def scalar(name, value):
            arr = jnp.asarray(value, dtype=float) if not isinstance(value, jax.Array) else value
            if arr.shape != ():
                raise ValueError(f"`{name}` must be a scalar, got shape {arr.shape}.")
            return arr

        self.cell_length_km = scalar("cell_length_km", cell_length_km)
        self.free_flow_speed_kmh = scalar("free_flow_speed_kmh", free_flow_speed_kmh)
        self.wave_speed_kmh = scalar("wave_speed_kmh", wave_speed_kmh)
        self.jam_density_veh_km = scalar("jam_density_veh_km", jam_density_veh_km)
        for name in ("cell_length_km", "free_flow_speed_kmh", "wave_speed_kmh", "jam_density_veh_km"):
            value = getattr(self, name)
            if _concrete(value) and not value > 0:
                raise ValueError(f"`{name}` must be positive, got {float(value)!r}.")
        self.dt_h = self.cell_length_km / self.free_flow_speed_kmh if dt_h is None else scalar("dt_h", dt_h)
        if _concrete(self.dt_h) and not self.dt_h > 0:
            raise ValueError(f"`dt_h` must be positive, got {float(self.dt_h)!r}.")
        fastest = jnp.maximum(self.free_flow_speed_kmh, self.wave_speed_kmh)
        if all(_concrete(v) for v in (fastest, self.dt_h, self.cell_length_km)):
            courant = float(fastest * self.dt_h / self.cell_length_km)
            if courant > 1.0 + 1e-12:
                raise ValueError(
                    f"`dt_h` = {float(self.dt_h)!r} h violates the CFL condition max(v_f, w) Δt ≤ Δx "
                    f"(Courant number {courant:.4g} > 1); use dt_h ≤ {float(self.cell_length_km / fastest)!r} h."
                )

        capacity = (
            jnp.asarray(capacity_veh_h, dtype=float) if not isinstance(capacity_veh_h, jax.Array) else (capacity_veh_h)
        )
        if capacity.ndim == 0:
            capacity = jnp.full((self.n_cells,), capacity)
        if capacity.shape != (self.n_cells,):
            raise ValueError(
                f"`capacity_veh_h` must be a scalar or have shape ({self.n_cells},), got shape {capacity.shape}."
            )
        if _concrete(capacity) and not bool(jnp.all(capacity > 0)):
            raise ValueError("`capacity_veh_h` must be positive in every cell.")
        self.capacity_veh_h = capacity
        self.downstream_supply_veh_h = (
            capacity[-1]
            if downstream_supply_veh_h is None
            else scalar("downstream_supply_veh_h", downstream_supply_veh_h)
        )
        if _concrete(self.downstream_supply_veh_h) and not self.downstream_supply_veh_h >= 0:
            raise ValueError("`downstream_supply_veh_h` must be non-negative.")

        for name, cells in (("on_ramp_cells", on_ramp_cells), ("off_ramp_cells", off_ramp_cells)):
            cells = tuple(cells)
            if not all(isinstance(c, int | np.integer) and 0 <= c < self.n_cells for c in cells):
                raise ValueError(f"`{name}` must be cell indices in [0, {self.n_cells}), got {cells!r}.")
            if len(set(cells)) != len(cells):
                raise ValueError(f"`{name}` must not repeat a cell, got {cells!r}.")
        self.on_ramp_cells = tuple(int(c) for c in on_ramp_cells)
        self.off_ramp_cells = tuple(int(c) for c in off_ramp_cells)

        split = (
            jnp.asarray(off_ramp_split, dtype=float) if not isinstance(off_ramp_split, jax.Array) else (off_ramp_split)
        )
        if split.shape != (len(self.off_ramp_cells),):
            raise ValueError(
                f"`off_ramp_split` must have one ratio per off-ramp, shape ({len(self.off_ramp_cells)},); got shape "
                f"{split.shape}."
            )
        if _concrete(split) and not bool(jnp.all((split >= 0) & (split < 1))):
            raise ValueError(f"`off_ramp_split` ratios must lie in [0, 1), got {split!r}.")
        self.off_ramp_split = split
        self.ramp_priority = scalar("ramp_priority", ramp_priority)
        if _concrete(self.ramp_priority) and not 0 <= self.ramp_priority <= 1:
            raise ValueError(f"`ramp_priority` must lie in [0, 1], got {float(self.ramp_priority)!r}.")

    # ----------------------------------------------------------------------------------------------------------------
    # layout

    @property
    def n_on(self) -> int:
        """Number of on-ramps ``m``."""
        return len(self.on_ramp_cells)

    @property
    def state_size(self) -> int:
        """Length of the state: ``n_cells + 1 + n_on + 3``."""
        return self.n_cells + self.n_on + 4

    @property
    def control_size(self) -> int:
        """Length of the control without capacity factors, ``1 + n_on`` (add ``n_cells`` to pass them)."""
        return 1 + self.n_on

    def initial_state(
        self,
        density_veh_km: Float[ArrayLike, "*cell"] = 0.0,
        entrance_queue_veh: Float[ArrayLike, ""] = 0.0,
        ramp_queues_veh: Float[ArrayLike, "*on_ramp"] = 0.0,
    ) -> Float[Array, " state"]:
        """A state with the given densities (scalar or per cell) and queues, and the cumulative counters at zero."""
        rho = jnp.broadcast_to(jnp.asarray(density_veh_km, dtype=float), (self.n_cells,))
        ramps = jnp.broadcast_to(jnp.asarray(ramp_queues_veh, dtype=float), (self.n_on,))
        return jnp.concatenate(
            [rho, jnp.reshape(jnp.asarray(entrance_queue_veh, dtype=float), (1,)), ramps, jnp.zeros(3)]
        )

    def density(self, x: Float[Array, "*batch state"]) -> Float[Array, "*batch cell"]:
        """Cell densities ``ρ`` (veh/km)."""
        return x[..., : self.n_cells]

    def entrance_queue(self, x: Float[Array, "*batch state"]) -> Float[Array, "*batch"]:
        """Vehicles waiting at the upstream entrance (veh)."""
        return x[..., self.n_cells]

    def ramp_queues(self, x: Float[Array, "*batch state"]) -> Float[Array, "*batch on_ramp"]:
        """Vehicles waiting on each on-ramp (veh)."""
        return x[..., self.n_cells + 1 : self.n_cells + 1 + self.n_on]

    def cumulative_counts(self, x: Float[Array, "*batch state"]) -> Float[Array, "*batch 3"]:
        """``[N_in, N_out, N_off]``: vehicles arrived, exited downstream, exited by the off-ramps (veh)."""
        return x[..., -3:]

    def vehicles(self, x: Float[Array, "*batch state"]) -> Float[Array, "*batch"]:
        """Vehicles in the system: ``Σ ρ_i Δx`` plus every queue (veh)."""
        return (
            jnp.sum(self.density(x), axis=-1) * self.cell_length_km
            + self.entrance_queue(x)
            + jnp.sum(self.ramp_queues(x), axis=-1)
        )

    def conservation_residual(
        self, x: Float[Array, "*batch state"], x0: Float[Array, " state"]
    ) -> Float[Array, "*batch"]:
        """``vehicles(x) − vehicles(x0) − (N_in − N_out − N_off)`` (veh), zero up to rounding; ``x0`` must have its
        counters at zero (as from :meth:`initial_state`)."""
        counts = self.cumulative_counts(x) - self.cumulative_counts(x0)
        return self.vehicles(x) - self.vehicles(x0) - (counts[..., 0] - counts[..., 1] - counts[..., 2])

    # ----------------------------------------------------------------------------------------------------------------
    # physics

    def sending(
        self, density: Float[Array, " cell"], capacity: Float[Array, " cell"] | None = None
    ) -> Float[Array, " cell"]:
        """Sending (demand) function ``S = min(v_f ρ, Q)`` (veh/h)."""
        capacity = self.capacity_veh_h if capacity is None else capacity
        return jnp.minimum(self.free_flow_speed_kmh * density, capacity)

    def receiving(
        self, density: Float[Array, " cell"], capacity: Float[Array, " cell"] | None = None
    ) -> Float[Array, " cell"]:
        """Receiving (supply) function ``R = min(Q, w (ρ_jam − ρ))`` (veh/h)."""
        capacity = self.capacity_veh_h if capacity is None else capacity
        return jnp.minimum(capacity, self.wave_speed_kmh * (self.jam_density_veh_km - density))

    def _split_control(self, u):
        if u.ndim != 1 or u.shape[0] not in (self.control_size, self.control_size + self.n_cells):
            raise ValueError(
                f"control `u` must be [demand, {self.n_on} on-ramp demands] (shape ({self.control_size},)) or that "
                f"followed by {self.n_cells} capacity factors (shape ({self.control_size + self.n_cells},)); got shape "
                f"{u.shape}."
            )
        demand = u[0]
        ramps = u[1 : self.control_size]
        factors = u[self.control_size :] if u.shape[0] > self.control_size else jnp.ones((self.n_cells,), u.dtype)
        return demand, ramps, factors

    def _check_state(self, x):
        if x.shape != (self.state_size,):
            raise ValueError(f"state `x` must have shape ({self.state_size},), got shape {x.shape}.")

    def flows(self, x: Float[Array, " state"], u: Float[Array, " control"]) -> CTMFlows:
        """The flows of one step from state ``x`` under control ``u`` (see the class docstring for the rules)."""
        self._check_state(x)
        demand, ramp_demand, factors = self._split_control(u)
        n, dt = self.n_cells, self.dt_h
        rho = self.density(x)
        capacity = self.capacity_veh_h * factors
        send = self.sending(rho, capacity)
        recv = self.receiving(rho, capacity)
        on = jnp.asarray(self.on_ramp_cells, dtype=int)
        off = jnp.asarray(self.off_ramp_cells, dtype=int)
        beta = jnp.zeros((n,), rho.dtype).at[off].set(self.off_ramp_split)
        keep = 1.0 - beta
        # mainline demand offered to each cell: the entrance queue for cell 0, the non-exiting share of S upstream
        entrance_demand = demand + self.entrance_queue(x) / dt
        main_demand = jnp.concatenate([entrance_demand[None], keep[:-1] * send[:-1]])
        ramp_demand_cells = jnp.zeros((n,), rho.dtype).at[on].set(ramp_demand + self.ramp_queues(x) / dt)
        # Daganzo (1995) priority merge (reduces to min(S, R) where there is no ramp)
        p = self.ramp_priority
        free = main_demand + ramp_demand_cells <= recv
        main_in = jnp.where(free, main_demand, _median(main_demand, recv - ramp_demand_cells, (1.0 - p) * recv))
        ramp_in = jnp.where(free, ramp_demand_cells, _median(ramp_demand_cells, recv - main_demand, p * recv))
        exit_flow = jnp.minimum(keep[-1] * send[-1], self.downstream_supply_veh_h)
        mainline = jnp.concatenate([main_in, exit_flow[None]])
        # FIFO diverge: the total outflow is the mainline outflow over the non-exiting share
        cell_outflow = mainline[1:] / keep
        off_flow = beta * cell_outflow
        return CTMFlows(
            entrance=main_in[0],
            mainline=mainline,
            on_ramp=ramp_in[on],
            off_ramp=off_flow[off],
            cell_outflow=cell_outflow,
        )

    def transition(
        self, t: Float[ArrayLike, ""], x: Float[Array, " state"], u: Float[Array, " control"]
    ) -> Float[Array, " state"]:
        """One CTM step: densities, queues and cumulative counters after ``Δt``."""
        f = self.flows(x, u)
        demand, ramp_demand, _ = self._split_control(u)
        n, dt = self.n_cells, self.dt_h
        on = jnp.asarray(self.on_ramp_cells, dtype=int)
        inflow = f.mainline[:-1] + jnp.zeros((n,), x.dtype).at[on].add(f.on_ramp)
        rho = self.density(x) + dt / self.cell_length_km * (inflow - f.cell_outflow)
        entrance = self.entrance_queue(x) + (demand - f.entrance) * dt
        ramps = self.ramp_queues(x) + (ramp_demand - f.on_ramp) * dt
        counts = self.cumulative_counts(x) + dt * jnp.stack(
            [demand + jnp.sum(ramp_demand), f.mainline[-1], jnp.sum(f.off_ramp)]
        )
        return jnp.concatenate([rho, entrance[None], ramps, counts]).astype(x.dtype)

    def simulate(self, x0: Float[Array, " state"], u_seq: Float[Array, "step control"]) -> Float[Array, "step1 state"]:
        """Run the model over the controls ``u_seq`` (one row per step) with ``lax.scan``; returns the ``step + 1``
        states from ``x0`` on."""
        self._check_state(x0)
        if u_seq.ndim != 2:
            raise ValueError(f"`u_seq` must have shape (step, control), got shape {u_seq.shape}.")
        ts = jnp.arange(u_seq.shape[0]) * self.dt_h

        def step(x, tu):
            nxt = self.transition(tu[0], x, tu[1])
            return nxt, nxt

        _, xs = jax.lax.scan(step, x0, (ts, u_seq))
        return jnp.concatenate([x0[None], xs])

    def travel_metrics(
        self, xs: Float[Array, "step1 state"], u_seq: Float[Array, "step control"]
    ) -> dict[str, Float[Array, ""]]:
        r"""Corridor performance of a run ``xs = simulate(x0, u_seq)``.

        - ``vehicle_hours``: total time spent,
          $\mathrm{VHT} = \sum_k \big(\sum_i \rho_i^k \Delta x + \text{queues}^k\big) \Delta t$ (veh·h),
          queues included;
        - ``vehicle_km``: distance travelled, $\mathrm{VKT} = \sum_k \sum_i f^{out,k}_i \Delta x\, \Delta t$ (veh·km),
          with $f^{out}_i$ the total outflow of cell ``i``;
        - ``delay``: $\mathrm{VHT} - \mathrm{VKT}/v_f$ (veh·h), the time spent beyond free-flow travel. It is zero in
          free flow (there $f^{out}_i = v_f \rho_i$) and counts every queued vehicle-hour.
        """
        if xs.shape[0] != u_seq.shape[0] + 1:
            raise ValueError(
                f"`xs` must hold one more state than `u_seq` has steps; got {xs.shape[0]} and {u_seq.shape[0]}."
            )
        starts = xs[:-1]
        outflow = jax.vmap(lambda x, u: self.flows(x, u).cell_outflow)(starts, u_seq)
        vht = jnp.sum(self.vehicles(starts)) * self.dt_h
        vkt = jnp.sum(outflow) * self.cell_length_km * self.dt_h
        return {"vehicle_hours": vht, "vehicle_km": vkt, "delay": vht - vkt / self.free_flow_speed_kmh}

    def with_incident(self, cell: int, factor: Float[ArrayLike, ""]) -> "CellTransmissionModel":
        """A copy with the capacity of ``cell`` scaled by ``factor ∈ (0, 1]`` (a lane closure held for the whole run;
        for an incident over a time window pass capacity factors in ``u``, see :func:`incident_capacity_factors`)."""
        if not isinstance(cell, int | np.integer) or not 0 <= cell < self.n_cells:
            raise ValueError(f"`cell` must be a cell index in [0, {self.n_cells}), got {cell!r}.")
        if _concrete(factor) and not 0 < float(factor) <= 1:
            raise ValueError(f"`factor` must lie in (0, 1], got {factor!r}.")
        capacity = self.capacity_veh_h.at[cell].multiply(factor)
        return eqx.tree_at(lambda m: m.capacity_veh_h, self, capacity)


def incident_capacity_factors(
    ts_h: Float[ArrayLike, " step"],
    n_cells: int,
    cell: int,
    start_h: Float[ArrayLike, ""],
    end_h: Float[ArrayLike, ""],
    factor: Float[ArrayLike, ""],
) -> Float[Array, "step cell"]:
    """Remaining-capacity factors of an incident: ``factor`` in ``cell`` for ``start_h ≤ t < end_h``, 1 elsewhere.

    Append them to the demands to form the control of :class:`CellTransmissionModel`, e.g.
    ``us = jnp.concatenate([demands, incident_capacity_factors(ts, n, 12, 0.5, 1.5, 0.5)], axis=1)``; several
    incidents combine by multiplying their factors.

    Raises:
        ValueError: for a ``cell`` out of range or a ``factor`` outside ``[0, 1]``.
    """
    if not isinstance(cell, int | np.integer) or not 0 <= cell < n_cells:
        raise ValueError(f"`cell` must be a cell index in [0, {n_cells}), got {cell!r}.")
    if _concrete(factor) and not 0 <= float(factor) <= 1:
        raise ValueError(f"`factor` must lie in [0, 1], got {factor!r}.")
    ts = jnp.asarray(ts_h, dtype=float)
    active = (ts >= start_h) & (ts < end_h)
    column = jnp.where(active, jnp.asarray(factor, dtype=float), 1.0)
    return jnp.ones((ts.shape[0], n_cells)).at[:, cell].set(column)
