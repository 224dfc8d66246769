"""``twinjax.calibrate``: system identification by gradients through the solver, Bayesian calibration (numpyro SVI,
blackjax NUTS), and experiment design.

- :mod:`~twinjax.calibrate.objectives` — trajectory least squares (single and multiple shooting) and the filter's
  negative log marginal likelihood, as functions of the unconstrained parameter vector of a :class:`~twinjax.Params`.
- :mod:`~twinjax.calibrate.sysid` — ``fit`` (optax or optimistix Levenberg–Marquardt / Gauss–Newton), multi-start,
  Fisher information, Laplace covariance and profile likelihood.
- :mod:`~twinjax.calibrate.bayes` — a numpyro model generated from the twin and its priors, SVI, NUTS, R-hat / ESS,
  posterior predictive bands, and the joint posterior over parameters and latent states.
- :mod:`~twinjax.calibrate.design` — A-/D-optimal sequential experiment design (active learning).
"""

from . import bayes as bayes, design as design, objectives as objectives, sysid as sysid
