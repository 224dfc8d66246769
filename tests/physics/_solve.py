"""A tight-tolerance diffrax solve shared by the physics tests (one compiled solve per test, checked afterwards)."""

import diffrax
import jax
import jax.numpy as jnp


def solve(vector_field, x0, ts, *, rtol=1e-10, atol=1e-10, solver=None, max_steps=200_000):
    """Integrate ``dx/dt = vector_field(t, x)`` from ``ts[0]`` and return the states at ``ts`` (shape (time, state))."""
    ts = jnp.asarray(ts)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, x, args: vector_field(t, x)),
        diffrax.Tsit5() if solver is None else solver,
        ts[0],
        ts[-1],
        None,
        x0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
    )
    return sol.ys


def rk4(vector_field, x0, dt, n_steps):
    """Classical RK4 with a fixed step as one ``lax.scan`` (cheap to compile and to differentiate in reverse mode)."""

    def step(carry, _):
        t, x = carry
        k1 = vector_field(t, x)
        k2 = vector_field(t + dt / 2, x + dt / 2 * k1)
        k3 = vector_field(t + dt / 2, x + dt / 2 * k2)
        k4 = vector_field(t + dt, x + dt * k3)
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return (t + dt, x), None

    (_, x), _ = jax.lax.scan(step, (jnp.zeros((), x0.dtype), x0), None, length=n_steps)
    return x
