"""The result of a forward simulation."""

import equinox as eqx

from .._types import Array, Float, Int


class Trajectory(eqx.Module):
    """A simulated (or recorded) trajectory; in an ensemble every field has a leading ``member`` axis.

    Attributes:
        ts: the save times, shape ``(time,)`` (shared by all members).
        xs: latent states at ``ts``, shape ``(time, state)``.
        ys: measurements at ``ts``, shape ``(time, obs)`` (``None`` for a twin without sensors or when not observed).
        us: the controls, shape ``(time, control)``: ``us[k]`` is held over ``[t_k, t_{k+1})`` (zero-order hold);
            its last row is the control at the final time. Shared by all members of an ensemble when the controls were.
        status: a :class:`~twinjax.Status` code (``int32``), per member in an ensemble: 0 means every interval solved.
        params: the physical parameter vector ``φ`` used (drawn from the prior in ancestral sampling), or ``None``.
    """

    ts: Float[Array, " time"]
    xs: Float[Array, "*member time state"]
    ys: Float[Array, "*member time obs"] | None
    us: Float[Array, "*umember time control"]
    status: Int[Array, "*member"]
    params: Float[Array, "*member param"] | None = None

    @property
    def ok(self):
        """``True`` where the solve succeeded (per member in an ensemble)."""
        return self.status == 0
