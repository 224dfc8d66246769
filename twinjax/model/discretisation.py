"""How a continuous-time twin is integrated over one sampling interval (diffrax settings carried by the model)."""

import diffrax
import equinox as eqx


class Discretisation(eqx.Module):
    """diffrax settings for integrating a twin's ODE/SDE over each interval ``[t_k, t_{k+1}]``.

    Controls are held constant over an interval (zero-order hold), so every interval is its own solve: the solver
    never steps across a discontinuity of the input.

    Arguments:
        solver: a diffrax solver. Default: ``Tsit5`` for ODEs, ``Euler`` (Euler–Maruyama) for SDEs.
        stepsize_controller: default ``PIDController(rtol=1e-6, atol=1e-9)`` for ODEs, ``ConstantStepSize`` for SDEs.
        substeps: the initial step is ``(t_{k+1} - t_k) / substeps`` (with a constant step size: the number of steps).
        max_steps: the most steps one interval may take; hitting it is reported as ``Status.max_steps_reached``.
        adjoint: how gradients flow through the solve (diffrax adjoint); default recursive checkpointing.

    Example:
        ```python
        fast = tj.Discretisation(solver=diffrax.Heun(), stepsize_controller=diffrax.ConstantStepSize(), substeps=2)
        twin = eqx.tree_at(lambda m: m.discretisation, twin, fast)
        ```
    """

    solver: diffrax.AbstractSolver | None = None
    stepsize_controller: diffrax.AbstractStepSizeController | None = None
    substeps: int = eqx.field(static=True, default=4)
    max_steps: int = eqx.field(static=True, default=4096)
    adjoint: diffrax.AbstractAdjoint = diffrax.RecursiveCheckpointAdjoint()

    def __check_init__(self):
        if not isinstance(self.substeps, int) or self.substeps < 1:
            raise ValueError(f"`substeps` must be a positive integer, got {self.substeps!r}.")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"`max_steps` must be a positive integer, got {self.max_steps!r}.")

    def resolved(self, stochastic: bool) -> "Discretisation":
        """Fill the defaults that depend on whether the dynamics are stochastic."""
        solver = self.solver
        controller = self.stepsize_controller
        if solver is None:
            solver = diffrax.Euler() if stochastic else diffrax.Tsit5()
        if controller is None:
            controller = diffrax.ConstantStepSize() if stochastic else diffrax.PIDController(rtol=1e-6, atol=1e-9)
        return Discretisation(solver, controller, self.substeps, self.max_steps, self.adjoint)
