"""One entry point for counterfactual queries, on a structural causal model or on a dynamical twin."""

from collections.abc import Mapping
from typing import Any

from .dynamic import twin_counterfactual
from .intervention import Intervention
from .scm import SCM


def counterfactual(model, evidence, intervention: Intervention | Mapping[str, Any], *, key=None, **kwargs):
    """What would have happened to this unit under ``intervention``? Abduction → action → prediction.

    Dispatches on the model:

    - an :class:`~twinjax.causal.SCM`: ``evidence`` maps observed variable names to values; abduction infers the
      exogenous noise (exactly for additive mechanisms, by weighted sampling otherwise); returns
      ``(values, weights)`` as :meth:`SCM.counterfactual` (``key`` required; ``n=`` draws);
    - a twin (:class:`~twinjax.StateSpaceModel`, :class:`~twinjax.LinearGaussianSSM`): ``evidence`` is the recorded
      :class:`~twinjax.Trajectory` or ``(ts, ys, us)``; abduction smooths the process noise; returns a
      :class:`~twinjax.causal.CounterfactualResult` as :func:`~twinjax.causal.twin_counterfactual` (``smoother=``,
      ``n_samples=``, ``params=``).

    **Arguments:**

    - `model`: the SCM or the twin.
    - `evidence`: what was observed of the unit.
    - `intervention`: the hypothetical, from :func:`~twinjax.causal.do`.
    - `key`: a PRNG key (required for an SCM and for twin posterior draws).
    - `**kwargs`: passed on to the method above.
    """
    if isinstance(model, SCM):
        if key is None:
            raise ValueError("counterfactual: key is required for an SCM (abduction draws the exogenous noise)")
        return model.counterfactual(key, evidence, intervention, **kwargs)
    return twin_counterfactual(model, evidence, intervention, key=key, **kwargs)
