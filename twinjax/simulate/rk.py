"""A lean explicit Runge–Kutta kernel for fixed-step batched solves.

diffrax does every adaptive, implicit and SDE-with-tree solve. For the fixed-step ensemble path, a hand-written
explicit RK step in ``lax.scan`` over one batched state is several times faster on CPU than diffrax's per-step
machinery (measured in ``benchmarks/ensemble.py``), so that path uses this kernel. The tableau is unrolled at trace
time: zero coefficients cost nothing.
"""

import equinox as eqx


class Tableau(eqx.Module):
    """Butcher tableau of an explicit Runge–Kutta method (static: it is part of the compiled program)."""

    name: str = eqx.field(static=True)
    order: int = eqx.field(static=True)
    a: tuple[tuple[float, ...], ...] = eqx.field(static=True)
    b: tuple[float, ...] = eqx.field(static=True)
    c: tuple[float, ...] = eqx.field(static=True)

    def __check_init__(self):
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"Tableau {self.name!r}: a must be strictly lower-triangular with {s} rows.")


EULER = Tableau("euler", 1, ((),), (1.0,), (0.0,))
HEUN = Tableau("heun", 2, ((), (1.0,)), (0.5, 0.5), (0.0, 1.0))
MIDPOINT = Tableau("midpoint", 2, ((), (0.5,)), (0.0, 1.0), (0.0, 0.5))
RK3 = Tableau("rk3", 3, ((), (0.5,), (-1.0, 2.0)), (1 / 6, 2 / 3, 1 / 6), (0.0, 0.5, 1.0))
RK4 = Tableau("rk4", 4, ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6), (0.0, 0.5, 0.5, 1.0))

TABLEAUS = {t.name: t for t in (EULER, HEUN, MIDPOINT, RK3, RK4)}


def get_tableau(tableau: "str | Tableau") -> Tableau:
    """Look up a tableau by name (``euler``, ``heun``, ``midpoint``, ``rk3``, ``rk4``)."""
    if isinstance(tableau, Tableau):
        return tableau
    try:
        return TABLEAUS[tableau]
    except KeyError:
        raise ValueError(f"`tableau` must be one of {sorted(TABLEAUS)} or a tj.Tableau, got {tableau!r}.") from None


def _axpy(x, dt, coeffs, ks):
    acc = None
    for coef, k in zip(coeffs, ks):
        if coef != 0.0:
            term = coef * k
            acc = term if acc is None else acc + term
    return x if acc is None else x + dt * acc


def rk_step(f, t, x, dt, tableau: Tableau):
    """One explicit RK step of ``dx/dt = f(t, x)`` (``x`` of any shape, e.g. a batch of states)."""
    ks = []
    for ci, ai in zip(tableau.c, tableau.a):
        ks.append(f(t + ci * dt, _axpy(x, dt, ai, ks)))
    return _axpy(x, dt, tableau.b, ks)
