"""``twinjax.calibrate``: system identification by gradients through the solver, Bayesian calibration (numpyro SVI,
blackjax NUTS), the joint posterior over parameters and states, and experiment design.

- :mod:`~twinjax.calibrate.objectives` — trajectory least squares (single and multiple shooting) and the filter's
  negative log marginal likelihood, as functions of the unconstrained parameter vector of a :class:`~twinjax.Params`.
- :mod:`~twinjax.calibrate.sysid` — ``fit`` (optax or optimistix Levenberg–Marquardt / Gauss–Newton / BFGS),
  ``multistart``, ``fisher_information``, ``laplace`` and ``profile_likelihood``.
- :mod:`~twinjax.calibrate.bayes` — a numpyro model generated from the twin and its priors, ``svi``, ``nuts``,
  ``rhat`` / ``ess``, ``posterior_predictive`` bands.
- :mod:`~twinjax.calibrate.states` — ``structured_vi``: the joint posterior ``p(φ, x_{0:T} | y_{0:T}, u)`` with a
  Markov-Gaussian state guide.
- :mod:`~twinjax.calibrate.design` — A-/D-optimal sequential experiment design and input design for nonlinear twins.
"""

from . import (
    bayes as bayes,
    design as design,
    objectives as objectives,
    states as states,
    sysid as sysid,
)
from .bayes import (
    MCMCResult as MCMCResult,
    PredictiveBands as PredictiveBands,
    SVIResult as SVIResult,
    ess as ess,
    log_posterior as log_posterior,
    numpyro_model as numpyro_model,
    nuts as nuts,
    plot_predictive_bands as plot_predictive_bands,
    posterior_predictive as posterior_predictive,
    rhat as rhat,
    svi as svi,
)
from .design import (
    BayesianLinearRegression as BayesianLinearRegression,
    DesignResult as DesignResult,
    InputDesign as InputDesign,
    a_optimal_choice as a_optimal_choice,
    d_optimal_choice as d_optimal_choice,
    design_criterion as design_criterion,
    design_input as design_input,
    fisher_information_of_input as fisher_information_of_input,
    sequential_design as sequential_design,
)
from .states import StatePosterior as StatePosterior, structured_vi as structured_vi
from .sysid import (
    FitResult as FitResult,
    FitState as FitState,
    Laplace as Laplace,
    MultiStartResult as MultiStartResult,
    ProfileLikelihood as ProfileLikelihood,
    fisher_information as fisher_information,
    fit as fit,
    fit_init as fit_init,
    fit_step as fit_step,
    laplace as laplace,
    multistart as multistart,
    profile_likelihood as profile_likelihood,
)
