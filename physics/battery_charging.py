r"""Fast charging of the Thevenin cell as an optimal control problem, in JAX and (for checking) in CasADi.

The discrete-time model is one classical RK4 step of :meth:`physics.battery.TheveninBattery.vector_field` over
``dt_s`` with the current held constant (state ``x = [soc, v_1, T_cell_K]``, control ``u = [I]`` in A, **negative
while charging**, the model's convention). Over ``N`` steps the charger minimises

$$ J = \sum_{k=0}^{N-1} w\,(\mathrm{soc}^\star - \mathrm{soc}_{k+1})^2
        + \rho \Big(\frac{I_k - I_{k-1}}{I_{\max}}\Big)^2 $$

(reach the target state of charge fast, with a small smoothing term) subject to ``|I_k| ≤ I_max`` (3C = 15 A for the
5 A h cell), the terminal voltage at the end of each step ``V(x_{k+1}, I_k) ≤ V_max`` (4.2 V) and the cell temperature
``T_{k+1} ≤ T_max`` (45 °C = 318.15 K). The optimum is the familiar constant-current / thermally-limited /
constant-voltage charge. :func:`charging_ocp` builds the :class:`twinjax.control.mpc.OCP`; the twin (the
``TheveninBattery`` module) is the OCP's ``params``, so gradients of the optimal cost reach its physics.

:func:`casadi_problem` writes the *same* model (same RK4 step, same cost and constraints, and the OCV as the same
piecewise-cubic PCHIP interpolant: the table's knots and Fritsch–Carlson slopes evaluated piece by piece, extrapolated
linearly) for CasADi/IPOPT, imported lazily (CasADi is a test/benchmark extra). Only cells with constant
resistances, capacitances and entropic coefficient (such as :func:`physics.battery.cell_5Ah`) can be transcribed.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from twinjax.control.mpc import OCP

from .battery import TheveninBattery, cell_5Ah
from .lookup import Lookup, _pchip_slopes


def rk4_step(
    cell: TheveninBattery, x: Float[Array, " state"], u: Float[Array, " control"], dt_s
) -> Float[Array, " state"]:
    """One classical Runge–Kutta step of the cell's vector field over ``dt_s`` (s), current held constant."""
    f = lambda y: cell.vector_field(0.0, y, u)  # noqa: E731 — autonomous: the time argument is unused
    k1 = f(x)
    k2 = f(x + 0.5 * dt_s * k1)
    k3 = f(x + 0.5 * dt_s * k2)
    k4 = f(x + dt_s * k3)
    return x + dt_s / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


class ChargingProblem(eqx.Module):
    """Settings of the charging OCP (all arrays, so changing them does not recompile).

    Arguments:
        dt_s: control interval (s).
        soc_target: target state of charge.
        soc_weight: ``w``, weight of the squared SOC error.
        smoothing: ``ρ``, weight of the squared normalised current change.
        current_max_A: ``I_max`` (A); the bounds are ``±I_max``.
        voltage_max_V: ``V_max`` (V).
        temperature_max_K: ``T_max`` (K).
    """

    dt_s: Float[Array, ""]
    soc_target: Float[Array, ""]
    soc_weight: Float[Array, ""]
    smoothing: Float[Array, ""]
    current_max_A: Float[Array, ""]
    voltage_max_V: Float[Array, ""]
    temperature_max_K: Float[Array, ""]

    def __init__(
        self,
        dt_s: Float[ArrayLike, ""] = 20.0,
        soc_target: Float[ArrayLike, ""] = 0.8,
        soc_weight: Float[ArrayLike, ""] = 100.0,
        smoothing: Float[ArrayLike, ""] = 1e-2,
        current_max_A: Float[ArrayLike, ""] = 15.0,
        voltage_max_V: Float[ArrayLike, ""] = 4.2,
        temperature_max_K: Float[ArrayLike, ""] = 318.15,
    ):
        self.dt_s = jnp.asarray(dt_s, float)
        self.soc_target = jnp.asarray(soc_target, float)
        self.soc_weight = jnp.asarray(soc_weight, float)
        self.smoothing = jnp.asarray(smoothing, float)
        self.current_max_A = jnp.asarray(current_max_A, float)
        self.voltage_max_V = jnp.asarray(voltage_max_V, float)
        self.temperature_max_K = jnp.asarray(temperature_max_K, float)

    def dynamics(self, x, u, cell: TheveninBattery):
        """``x_{k+1}`` from ``x_k`` and ``u_k = [I]`` (one RK4 step)."""
        return rk4_step(cell, x, u, self.dt_s)

    def stage_cost(self, x_next, u, du, cell: TheveninBattery):
        """``w (soc* - soc_{k+1})² + ρ (ΔI / I_max)²``."""
        return self.soc_weight * (self.soc_target - x_next[0]) ** 2 + self.smoothing * jnp.sum(
            (du / self.current_max_A) ** 2
        )

    def constraint(self, x_next, u, cell: TheveninBattery):
        """``[V(x_{k+1}, I_k) - V_max, T_{k+1} - T_max] ≤ 0`` (V, K)."""
        volts = cell.terminal_voltage(0.0, x_next, u)
        return jnp.stack([volts - self.voltage_max_V, x_next[-1] - self.temperature_max_K])


def default_cell() -> TheveninBattery:
    """The cell of the charging problem: :func:`~physics.battery.cell_5Ah` with one RC pair at 35 °C ambient."""
    return cell_5Ah(n_rc=1, ambient_temperature_K=308.15)


def charging_ocp(problem: ChargingProblem | None = None, horizon: int = 25, *, unroll: bool = False) -> OCP:
    """The charging OCP over ``horizon`` steps; solve it with ``mpc.solve(ocp, x0, cell)``.

    Example:
        ```python
        from twinjax.control import mpc
        cell = default_cell()
        sol = mpc.solve(charging_ocp(), cell.initial_state(0.3), cell)
        ```
    """
    problem = ChargingProblem() if problem is None else problem
    i_max = problem.current_max_A
    return OCP(
        problem.dynamics,
        problem.stage_cost,
        horizon=horizon,
        state_dim=3,
        u_lo=-i_max[None],
        u_hi=i_max[None],
        constraint=problem.constraint,
        unroll=unroll,
    )


# --- CasADi transcription (the same model, for IPOPT) -----------------------------------------------------------------


def _constant(p, name: str) -> float:
    if isinstance(p, Lookup):
        raise ValueError(f"the CasADi transcription needs a constant `{name}`, got a Lookup table.")
    return float(p)


def casadi_model(cell: TheveninBattery, problem: ChargingProblem):
    """CasADi functions ``step(x, I) -> x_next``, ``voltage(x, I)`` of the same discrete model (SX, exact)."""
    import casadi as ca

    if cell.n_rc != 1 or cell.has_jig:
        raise ValueError("the CasADi transcription covers one RC pair and no jig (cell_5Ah(n_rc=1)).")
    ocv = cell.ocv_V
    if ocv.method != "pchip":
        raise ValueError(f"the CasADi transcription covers a PCHIP OCV table, got method={ocv.method!r}.")
    knots = np.asarray(ocv.grids[0], float)
    vals = np.asarray(ocv.values, float)
    slopes = np.asarray(_pchip_slopes(jnp.asarray(knots), jnp.asarray(vals)), float)
    q_Ah = float(cell.capacity_Ah)
    r0 = _constant(cell.r0_ohm, "r0_ohm")
    r1, c1 = _constant(cell.r_rc_ohm[0], "r_rc_ohm"), _constant(cell.c_rc_F[0], "c_rc_F")
    if _constant(cell.entropic_V_K, "entropic_V_K") != 0.0:
        raise ValueError("the CasADi transcription assumes entropic_V_K = 0.")
    c_th, k_th, t_amb = (
        float(cell.cell_heat_capacity_J_K),
        float(cell.cell_heat_transfer_W_K),
        float(cell.ambient_temperature_K),
    )
    dt = float(problem.dt_s)

    def ocv_fn(q):
        expr = vals[-1] + slopes[-1] * (q - knots[-1])
        for i in range(len(knots) - 2, -1, -1):
            h = knots[i + 1] - knots[i]
            t = (q - knots[i]) / h
            t2, t3 = t * t, t * t * t
            cubic = (
                (2 * t3 - 3 * t2 + 1) * vals[i]
                + (t3 - 2 * t2 + t) * h * slopes[i]
                + (-2 * t3 + 3 * t2) * vals[i + 1]
                + (t3 - t2) * h * slopes[i + 1]
            )
            # the JAX Lookup uses interval i for knots[i] <= q < knots[i+1]; the last one also for q == knots[-1]
            expr = (
                ca.if_else(q < knots[i + 1], cubic, expr)
                if i < len(knots) - 2
                else ca.if_else(q <= knots[i + 1], cubic, expr)
            )
        return ca.if_else(q < knots[0], vals[0] + slopes[0] * (q - knots[0]), expr)

    def rhs(x, current):
        v1, temp = x[1], x[2]
        q_irr = current**2 * r0 + current * v1
        return ca.vertcat(
            -current / (3600.0 * q_Ah), -v1 / (r1 * c1) + current / c1, (q_irr - k_th * (temp - t_amb)) / c_th
        )

    x = ca.SX.sym("x", 3)
    cur = ca.SX.sym("I")
    k1 = rhs(x, cur)
    k2 = rhs(x + 0.5 * dt * k1, cur)
    k3 = rhs(x + 0.5 * dt * k2, cur)
    k4 = rhs(x + dt * k3, cur)
    step = ca.Function("step", [x, cur], [x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)])
    voltage = ca.Function("voltage", [x, cur], [ocv_fn(x[0]) - r0 * cur - x[1]])
    return step, voltage


class CasadiCharging:
    """The charging OCP (single shooting, as the JAX side) as a CasADi ``nlpsol`` with IPOPT (exact Hessian).

    ``solve(x0, u_prev, u_guess)`` (state, previous current, initial guess of the ``N`` currents) returns
    ``dict(us, cost, lam_g, lam_x, time_s, status, iterations)``; ``time_s`` is the wall time of the IPOPT call.
    """

    def __init__(self, cell: TheveninBattery, problem: ChargingProblem, horizon: int, *, tol: float = 1e-10):
        import casadi as ca

        step, voltage = casadi_model(cell, problem)
        self.horizon = horizon
        x0 = ca.SX.sym("x0", 3)
        u_prev = ca.SX.sym("u_prev")
        us = ca.SX.sym("u", horizon)
        i_max = float(problem.current_max_A)
        w, rho = float(problem.soc_weight), float(problem.smoothing)
        target, v_max, t_max = float(problem.soc_target), float(problem.voltage_max_V), float(problem.temperature_max_K)
        x, cost, g, last = x0, 0, [], u_prev
        for k in range(horizon):
            x = step(x, us[k])
            cost = cost + w * (target - x[0]) ** 2 + rho * ((us[k] - last) / i_max) ** 2
            g += [voltage(x, us[k]) - v_max, x[2] - t_max]
            last = us[k]
        nlp = {"x": us, "p": ca.vertcat(x0, u_prev), "f": cost, "g": ca.vertcat(*g)}
        base = {"ipopt.tol": tol, "ipopt.print_level": 0, "print_time": False, "ipopt.sb": "yes"}
        self._solver = ca.nlpsol("charging", "ipopt", nlp, base)
        self._bounds = dict(lbx=-i_max, ubx=i_max, lbg=-np.inf, ubg=0.0)

    def solve(self, x0, u_prev, u_guess) -> dict:
        import time

        p = np.concatenate([np.asarray(x0, float), np.atleast_1d(np.asarray(u_prev, float))])
        args = dict(x0=np.asarray(u_guess, float).reshape(-1), p=p, **self._bounds)
        solver = self._solver
        start = time.perf_counter()
        out = solver(**args)
        elapsed = time.perf_counter() - start
        stats = solver.stats()
        return {
            "us": np.asarray(out["x"]).reshape(-1),
            "cost": float(out["f"]),
            "lam_g": np.asarray(out["lam_g"]).reshape(-1),
            "lam_x": np.asarray(out["lam_x"]).reshape(-1),
            "time_s": elapsed,
            "status": stats["return_status"],
            "iterations": stats["iter_count"],
        }


# ---------------------------------------------------------------------------------------------------------------------
# IPOPT in a child process


_FIELDS = ("dt_s", "soc_target", "soc_weight", "smoothing", "current_max_A", "voltage_max_V", "temperature_max_K")


def _run_child(payload: dict, retries: int) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1")
    for _ in range(retries + 1):
        proc = subprocess.run(
            [sys.executable, "-m", "physics.battery_charging"],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode >= 0:  # < 0: killed by a signal, tried again
            break
    if proc.returncode != 0:
        raise RuntimeError(f"the CasADi child process exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ipopt_solve(problem: ChargingProblem, horizon: int, cases, *, tol: float = 1e-10, retries: int = 1) -> list[dict]:
    """:meth:`CasadiCharging.solve` of the :func:`default_cell` problem for each ``(x0, u_prev, u_guess)`` in
    ``cases``, run in a child Python process (JSON over pipes; ``time_s`` is measured there).

    CasADi's shared libraries never load into the calling process: two of the four worker crashes CI has seen
    (segmentation faults inside XLA's compiler, in tests that pass alone) were in test processes that had loaded them.
    A child killed by a signal is run again ``retries`` times.
    """
    payload = {
        "mode": "solve",
        "problem": {name: float(getattr(problem, name)) for name in _FIELDS},
        "horizon": int(horizon),
        "tol": float(tol),
        "cases": [
            [
                np.asarray(x, float).tolist(),
                float(np.asarray(u, float).reshape(-1)[0]),
                np.asarray(g, float).ravel().tolist(),
            ]
            for x, u, g in cases
        ],
    }
    out = _run_child(payload, retries)["results"]
    return [{k: (np.asarray(v) if isinstance(v, list) else v) for k, v in r.items()} for r in out]


def casadi_evaluate(problem: ChargingProblem, points, *, retries: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The CasADi transcription (:func:`casadi_model` of :func:`default_cell`) evaluated at ``(x, I)`` points in a child
    process (see :func:`ipopt_solve`): ``(next states (n, 3), terminal voltages (n,))``."""
    payload = {
        "mode": "model",
        "problem": {name: float(getattr(problem, name)) for name in _FIELDS},
        "points": [[np.asarray(x, float).tolist(), float(u)] for x, u in points],
    }
    out = _run_child(payload, retries)
    return np.asarray(out["steps"]), np.asarray(out["voltages"])


def _child_main() -> None:
    import json
    import sys

    payload = json.loads(sys.stdin.read())
    problem = ChargingProblem(**payload["problem"])
    cell = default_cell()
    if payload["mode"] == "model":
        step, voltage = casadi_model(cell, problem)
        steps = [np.asarray(step(np.asarray(x), u)).ravel().tolist() for x, u in payload["points"]]
        volts = [float(voltage(np.asarray(x), u)) for x, u in payload["points"]]
        print(json.dumps({"steps": steps, "voltages": volts}))
        return
    solver = CasadiCharging(cell, problem, payload["horizon"], tol=payload["tol"])
    results = []
    for x, u, guess in payload["cases"]:
        r = solver.solve(np.asarray(x), u, np.asarray(guess))
        results.append({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()})
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    _child_main()
