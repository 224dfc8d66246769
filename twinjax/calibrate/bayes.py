r"""Bayesian calibration of a twin: its posterior ``p(φ | y_{0:T}, u)`` by SVI (numpyro) and NUTS (blackjax).

The posterior is the chapter's ``p(φ | y_{0:T}, u_{0:T-1}) ∝ p(φ) p(y_{0:T} | φ, u)`` with the prior ``p(φ)`` from the
:class:`~twinjax.Params` spec and one of two likelihoods:

- ``"ode"`` — the deterministic twin rolled out from a known ``x_0`` (the ``x0`` argument, else the mean of
  ``model.initial``), each measurement scored by the sensor model: ``Σ_k log p(y_k | x_k(φ), φ)`` with ``NaN`` channels
  marginalised out (the sensor's masked Gaussian density, finite gradients);
- ``"filter"`` — the log marginal likelihood ``log p(y_{0:T} | φ) = Σ_k log p(y_k | y_{<k}, φ)`` of a Kalman-type filter
  (``"kf"``, ``"ekf"``, ``"ukf"``), for twins with process noise and an uncertain ``x_0`` (``model.initial``).

Samplers work in the unconstrained space ``z = T⁻¹(φ)`` of the spec; users see physical units.

- :func:`numpyro_model` builds the numpyro model (sample sites named by the spec, ``numpyro.factor`` of the likelihood);
- :func:`svi` fits an autoguide (``"normal"``, ``"mvn"``, ``"iaf"``, ``"bnaf"``) in one compiled ``lax.scan``;
- :func:`nuts` runs blackjax NUTS with window adaptation, several chains vmapped in one compiled call, on
  ``log p(z | y) = spec.log_prior_unconstrained(z) + log p(y | T(z))`` (:func:`log_posterior`). This is the density
  numpyro's ``potential_fn`` gives for the model of :func:`numpyro_model` (tested), written directly on the spec's
  flat vector so that NUTS, the gradient fit and the Laplace approximation of :mod:`~twinjax.calibrate.sysid` share one
  unconstrained space, and so that it can be vmapped over datasets (:func:`run_nuts` is the pure, vmappable kernel);
- :func:`rhat` (split R-hat) and :func:`ess` (Geyer's initial monotone sequence) in JAX;
- :func:`posterior_predictive` and :func:`plot_predictive_bands`: rollouts of posterior draws with sensor noise.

References:
    Chapter ``001_…``, "The Probabilistic Foundation of the Digital Twin" (the joint, the posterior over ``φ``).
    M. D. Hoffman, A. Gelman, "The No-U-Turn Sampler", JMLR 15, 2014; Stan Reference Manual (window adaptation, R-hat,
    ESS). A. Vehtari et al., "Rank-normalization, folding, and localization: an improved R-hat", Bayesian Anal., 2021.
"""

import functools
from collections.abc import Callable

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoBNAFNormal, AutoIAFNormal, AutoMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_median, init_to_value

from .._checks import as_float_array
from .._types import Array, ArrayLike, Float, Int, Key, Scalar
from ..inference import extended_kalman_filter, kalman_filter, unscented_kalman_filter
from ..inference._base import prepare_inputs
from ..model.params import Params
from ..model.ssm import AbstractStateSpaceModel
from ..model.status import Status
from ..simulate.simulate import simulate
from ..simulate.trajectory import Trajectory
from .objectives import rollout

LIKELIHOODS = ("ode", "filter")
FILTERS = {"kf": kalman_filter, "ekf": extended_kalman_filter, "ukf": unscented_kalman_filter}
GUIDES = {"normal": AutoNormal, "mvn": AutoMultivariateNormal, "iaf": AutoIAFNormal, "bnaf": AutoBNAFNormal}

# ---------------------------------------------------------------------------------------------------------------------
# data and likelihood


class Data(eqx.Module):
    """Validated measurements ``ys (T, obs)``, controls ``us (T, control)``, times ``ts (T,)`` and the known initial
    state ``x0 (state,)`` (``None``: the model's initial distribution)."""

    ys: Float[Array, "time obs"]
    us: Float[Array, "time control"]
    ts: Float[Array, " time"]
    x0: Float[Array, " state"] | None


def _check_choice(value, name: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {sorted(allowed)}, got {value!r}.")


def check_spec(model, spec) -> None:
    """Validate a :class:`~twinjax.Params` spec for Bayesian use on ``model``.

    Raises:
        ValueError: if ``spec`` is not a ``Params``, a path does not exist on ``model``, a parameter has no prior, or a
            prior's support is not the parameter's constraint (the samplers' unconstrained space would disagree).
    """
    if not isinstance(spec, Params):
        raise ValueError(f"`spec` must be a tj.Params spec, got {type(spec).__name__}.")
    spec.shapes(model)  # raises naming a path that does not exist
    priors = spec._priors()  # raises naming the parameters without a prior
    for name, prior in priors.items():
        constraint = spec.specs[name].constraint
        try:
            same = bool(prior.support == constraint)
        except Exception:  # a constraint with array bounds: compare the bijections' types instead
            same = type(prior.support) is type(constraint)
        if not same:
            raise ValueError(
                f"The prior of {name!r} has support {prior.support} but the parameter's constraint is {constraint}: "
                "give a prior on the same support (e.g. LogNormal for tj.positive)."
            )


def prepare_data(model, ys, us=None, ts=None, x0=None) -> Data:
    """Validate measurements for calibration; ``ys`` may be a :class:`~twinjax.Trajectory` (its ``ys``, ``us``, ``ts``
    fill the arguments left ``None``).

    Raises:
        ValueError: naming ``model``, ``ys``, ``us``, ``ts`` or ``x0`` for a wrong type or shape.
    """
    if not isinstance(model, AbstractStateSpaceModel):
        raise ValueError(f"`model` must be a tj.StateSpaceModel or tj.LinearGaussianSSM, got {type(model).__name__}.")
    if model.observation is None:
        raise ValueError(
            "`model` has no `observation`: calibration needs a sensor model (e.g. tj.GaussianObservation)."
        )
    if isinstance(ys, Trajectory):
        if ys.ys is None:
            raise ValueError("`ys` is a Trajectory without measurements (`ys.ys` is None).")
        us = ys.us if us is None else us
        ts = ys.ts if ts is None else ts
        ys = ys.ys
    ys, us, ts = prepare_inputs(model, ys, us, ts)
    if x0 is None:
        if model.initial is None:
            raise ValueError("`x0` is required: the model has no `initial` distribution.")
        n = model.initial.mean.shape[0]
    else:
        x0 = as_float_array(x0, "x0", ndim=1)
        n = x0.shape[0]
        if model.initial is not None and n != model.initial.mean.shape[0]:
            raise ValueError(f"`x0` must have shape ({model.initial.mean.shape[0]},), got {tuple(x0.shape)}.")
        x0 = x0.astype(ys.dtype)
    y_shape = jax.eval_shape(model.observation.mean, ts[0], jnp.zeros(n, ys.dtype), us[0]).shape
    p = y_shape[0] if y_shape else 1
    if ys.shape[1] != p:
        raise ValueError(
            f"`ys` must have shape ({ys.shape[0]}, {p}) (time, obs) for the model's sensor, got {ys.shape}."
        )
    return Data(ys, us, ts, x0)


def log_likelihood(model, data: Data, likelihood: str = "ode", filter: str = "ekf") -> tuple[Scalar, Array]:
    """``(log p(y_{0:T} | φ), ok)`` for the twin ``model`` (its parameters are ``φ``); see the module docstring.

    ``ok`` is ``False`` when a solve failed or the value is not finite; the log-likelihood is then ``-inf`` (a
    sampler rejects the point, a vmapped batch carries on).
    """
    _check_choice(likelihood, "likelihood", LIKELIHOODS)
    _check_choice(filter, "filter", FILTERS)
    ys, us, ts = data.ys, data.us, data.ts
    if likelihood == "ode":
        x0 = model.initial.mean if data.x0 is None else data.x0
        xs, status = rollout(model, x0.astype(ys.dtype), ts, us)
        ll = jnp.sum(jax.vmap(model.observation.log_prob)(ys, ts, xs, us))
    else:
        mean = cov = None
        if data.x0 is not None:
            mean, cov = data.x0, jnp.zeros((data.x0.shape[0],) * 2, ys.dtype)
        result = FILTERS[filter](model, ys, us, ts, mean=mean, cov=cov)
        ll, status = result.log_likelihood, jnp.max(result.status)
    ok = (status == Status.successful) & jnp.isfinite(ll)
    return jnp.where(ok, ll, -jnp.inf), ok


def log_density(model, spec: Params, data: Data, likelihood: str, filter: str, z) -> Scalar:
    """``log p(z | y)`` up to a constant for validated ``data`` (the pure core of :func:`log_posterior`)."""
    lp = spec.log_prior_unconstrained(model, z)
    ll, _ = log_likelihood(spec.from_unconstrained(model, z), data, likelihood, filter)
    return lp + ll


def log_posterior(
    model, spec: Params, ys, us=None, ts=None, *, likelihood: str = "ode", filter: str = "ekf", x0=None
) -> Callable[[Float[Array, " param"]], Scalar]:
    r"""The unnormalised log posterior in the unconstrained space, ``z ↦ log p(T(z)) + log|det ∂T/∂z| + log p(y|T(z))``.

    Arguments:
        model: the twin; spec: its calibrated parameters (every one with a prior).
        ys, us, ts, x0: the data (see :func:`numpyro_model`).
        likelihood, filter: see :func:`numpyro_model`.

    Returns:
        A pure function of the flat unconstrained vector ``z`` (``(param,)``), differentiable and vmappable (wrap it
        in ``jax.jit`` before evaluating it repeatedly).

    Raises:
        ValueError: as :func:`numpyro_model`.

    Example:
        ```python
        logp = log_posterior(twin, spec, ys, us)
        jax.grad(logp)(spec.to_unconstrained(twin))
        ```
    """
    _check_choice(likelihood, "likelihood", LIKELIHOODS)
    _check_choice(filter, "filter", FILTERS)
    check_spec(model, spec)
    data = prepare_data(model, ys, us, ts, x0)
    return functools.partial(log_density, model, spec, data, likelihood, filter)


# ---------------------------------------------------------------------------------------------------------------------
# the numpyro model


def _site_prior(prior: dist.Distribution, shape: tuple[int, ...]) -> dist.Distribution:
    if shape == ():
        return prior
    d = prior if prior.batch_shape == shape else prior.expand(shape)
    return d.to_event(len(shape))


def _numpyro_fn(model, spec: Params, data: Data, likelihood: str, filter: str):
    shapes = spec.shapes(model)
    priors = spec._priors()

    def numpyro_fn():
        pieces = [jnp.ravel(numpyro.sample(n, _site_prior(priors[n], shapes[n]))) for n in spec.names]
        twin = spec.with_values(model, jnp.concatenate(pieces).astype(data.ys.dtype))
        ll, _ = log_likelihood(twin, data, likelihood, filter)
        numpyro.factor("log_likelihood", ll)

    return numpyro_fn


def numpyro_model(
    model, spec: Params, ys, us=None, ts=None, *, likelihood: str = "ode", filter: str = "ekf", x0=None
) -> Callable[[], None]:
    r"""A numpyro model generated from the twin and the priors of its parameter spec.

    ``φ_i ~ prior_i`` (one sample site per spec entry, named by its path, e.g. ``"dynamics.length_m"``, in physical
    units; numpyro maps it to the unconstrained space of the prior's support, which must be the spec's constraint), then
    ``numpyro.factor("log_likelihood", log p(y | φ))`` with the ``"ode"`` or ``"filter"`` likelihood of the module
    docstring.

    Arguments:
        model: a :class:`~twinjax.StateSpaceModel` or :class:`~twinjax.LinearGaussianSSM` with a sensor.
        spec: the calibrated parameters (:class:`~twinjax.Params`), each with a prior.
        ys: measurements ``(time, obs)`` (``NaN`` = missing channel) or a :class:`~twinjax.Trajectory`.
        us: controls ``(time, control)``, ``us[k]`` held on ``[t_k, t_{k+1})``; required when ``model.control_dim > 0``.
        ts: measurement times ``(time,)`` (s); default ``model.dt * arange(time)``.
        likelihood: ``"ode"`` (deterministic rollout) or ``"filter"`` (log marginal likelihood of a filter).
        filter: ``"kf"``, ``"ekf"`` or ``"ukf"`` for the ``"filter"`` likelihood.
        x0: the known initial state ``(state,)``; default: the mean of ``model.initial`` (``"ode"``) or the whole
            initial distribution (``"filter"``).

    Returns:
        A numpyro model (a callable without arguments) for ``numpyro.infer`` (SVI, MCMC, Predictive).

    Raises:
        ValueError: for an unknown ``likelihood`` / ``filter``, a spec entry without a prior or with a prior on another
            support, a path not on the model, or data of the wrong shape.

    Example:
        ```python
        fn = numpyro_model(twin, spec, ys, us)
        mcmc = numpyro.infer.MCMC(numpyro.infer.NUTS(fn), num_warmup=500, num_samples=500)
        ```

    References:
        Chapter ``001_…``, "The Probabilistic Foundation of the Digital Twin".
    """
    _check_choice(likelihood, "likelihood", LIKELIHOODS)
    _check_choice(filter, "filter", FILTERS)
    check_spec(model, spec)
    data = prepare_data(model, ys, us, ts, x0)
    return _numpyro_fn(model, spec, data, likelihood, filter)


def _flat(spec: Params, model, samples: dict, lead: tuple[int, ...]) -> Float[Array, "*lead param"]:
    return jnp.concatenate([jnp.reshape(samples[n], lead + (-1,)) for n in spec.names], axis=-1)


# ---------------------------------------------------------------------------------------------------------------------
# SVI


class SVIResult(eqx.Module):
    """The fitted variational posterior.

    Attributes:
        losses: the negative-ELBO estimate at each step, ``(steps,)``.
        params: the guide's parameters (numpyro's dict).
        draws: draws of ``φ`` from the guide, physical units, ``(draws, param)``.
        elbo: the ELBO at the final parameters, estimated with ``elbo_particles`` particles (nats); elbo_se: its
            Monte-Carlo standard error.
        labels: one label per parameter entry.
    """

    losses: Float[Array, " steps"]
    params: dict
    draws: Float[Array, "draws param"]
    elbo: Scalar
    elbo_se: Scalar
    labels: tuple[str, ...] = eqx.field(static=True)
    _model: AbstractStateSpaceModel
    _data: Data
    _spec: Params = eqx.field(static=True)
    _guide: str = eqx.field(static=True)
    _likelihood: tuple[str, str] = eqx.field(static=True)
    _guide_kwargs: tuple = eqx.field(static=True)

    @property
    def mean(self) -> Float[Array, " param"]:
        """Posterior mean of ``φ`` (physical units; Monte Carlo over ``draws``)."""
        return jnp.mean(self.draws, axis=0)

    @property
    def sd(self) -> Float[Array, " param"]:
        """Posterior standard deviation of ``φ`` (physical units; Monte Carlo over ``draws``)."""
        return jnp.std(self.draws, axis=0, ddof=1)

    def sample(self, key: Key, n: int) -> Float[Array, "n param"]:
        """``n`` draws of ``φ`` from the fitted guide, physical units, ``(n, param)``."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"`n` must be a positive integer, got {n!r}.")
        return _guide_sample(
            self._model, self._spec, self._data, self._likelihood, self._guide, self._guide_kwargs, self.params, key, n
        )


def _make_guide(fn, guide: str, guide_kwargs: tuple, init_values):
    init = init_to_median(num_samples=15) if init_values is None else init_to_value(values=init_values)
    return GUIDES[guide](fn, init_loc_fn=init, **dict(guide_kwargs))


def _draw(spec, model, guide, params, key, n):
    samples = Predictive(guide, params=params, num_samples=n)(key)
    return _flat(spec, model, samples, (n,))


@eqx.filter_jit
def _guide_sample(model, spec, data, likelihood, guide, guide_kwargs, params, key, n):
    fn = _numpyro_fn(model, spec, data, *likelihood)
    return _draw(spec, model, _make_guide(fn, guide, guide_kwargs, None), params, key, n)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _svi_run(
    model, spec, data, likelihood, guide, guide_kwargs, optimizer, learning_rate, steps, num_particles, init, key,
    n_draws, elbo_particles,
):  # fmt: skip
    fn = _numpyro_fn(model, spec, data, *likelihood)
    init_values = None if init is None else dict(zip(spec.names, spec._split(model, init).values()))
    g = _make_guide(fn, guide, guide_kwargs, init_values)
    opt = optax.adam(learning_rate) if optimizer is None else optimizer
    engine = SVI(fn, g, opt, Trace_ELBO(num_particles=num_particles))
    k_init, k_draw, k_elbo = jax.random.split(key, 3)
    state = engine.init(k_init)
    state, losses = jax.lax.scan(lambda s, _: engine.update(s), state, None, length=steps)
    params = engine.get_params(state)
    draws = _draw(spec, model, g, params, k_draw, n_draws)
    # one-particle ELBOs, so that the estimate comes with its Monte-Carlo standard error
    elbos = jax.vmap(lambda k: -Trace_ELBO().loss(k, params, fn, g))(jax.random.split(k_elbo, elbo_particles))
    return losses, params, draws, jnp.mean(elbos), jnp.std(elbos, ddof=1) / jnp.sqrt(elbo_particles)


def svi(
    model,
    spec: Params,
    ys,
    us=None,
    ts=None,
    *,
    guide: str = "normal",
    steps: int = 2000,
    learning_rate: float = 1e-2,
    optimizer: optax.GradientTransformation | None = None,
    num_particles: int = 1,
    key: Key,
    likelihood: str = "ode",
    filter: str = "ekf",
    x0=None,
    init=None,
    n_draws: int = 4000,
    elbo_particles: int = 1000,
    guide_kwargs: dict | None = None,
) -> SVIResult:
    r"""Stochastic variational inference: fit an autoguide ``q_λ(φ)`` to ``p(φ | y)`` by maximising the ELBO.

    ``ELBO(λ) = E_{q_λ}[log p(y | φ) + log p(φ) - log q_λ(φ)] ≤ log p(y)``, with reparameterised gradients
    (``num_particles`` draws per step) in the unconstrained space. Guides (numpyro autoguides): ``"normal"`` (mean
    field, ``AutoNormal``), ``"mvn"`` (full-covariance Gaussian, ``AutoMultivariateNormal``), ``"iaf"`` (inverse
    autoregressive flow, ``AutoIAFNormal``), ``"bnaf"`` (block neural autoregressive flow, ``AutoBNAFNormal``). The
    whole optimisation is one compiled ``lax.scan`` of ``SVI.update``; repeated calls with the same shapes, spec,
    guide and optimizer object reuse the compilation (``learning_rate`` is traced).

    Arguments:
        model, spec, ys, us, ts, likelihood, filter, x0: the posterior (see :func:`numpyro_model`).
        guide: ``"normal"``, ``"mvn"``, ``"iaf"`` or ``"bnaf"``.
        steps: optimisation steps.
        learning_rate: Adam's step size (used when ``optimizer`` is ``None``).
        optimizer: an optax transformation instead of Adam (static: reuse the same object to avoid recompiling).
        num_particles: ELBO particles per step.
        key: PRNG key.
        init: where the guide starts, physical values ``(param,)`` or a fit result with ``.params``; default the
            prior median.
        n_draws: draws of ``φ`` kept in the result (its ``mean`` and ``sd``).
        elbo_particles: particles for the final ELBO estimate (>= 2).
        guide_kwargs: extra keyword arguments of the autoguide (e.g. ``{"num_flows": 2}``).

    Returns:
        An :class:`SVIResult` (``losses``, ``params``, ``draws``, ``mean``, ``sd``, ``elbo``, ``sample(key, n)``).

    Raises:
        ValueError: for an unknown ``guide``, non-positive ``steps`` / ``num_particles`` / ``n_draws``, and as
            :func:`numpyro_model`.

    Example:
        ```python
        post = svi(twin, spec, ys, us, guide="mvn", steps=3000, key=jax.random.key(0))
        post.mean, post.sd, post.sample(jax.random.key(1), 100)
        ```

    References:
        M. D. Hoffman et al., "Stochastic variational inference", JMLR 14, 2013; D. P. Kingma et al., "Improved
        variational inference with inverse autoregressive flow", NeurIPS 2016; N. De Cao et al., "Block neural
        autoregressive flow", UAI 2019.
    """
    _check_choice(guide, "guide", GUIDES)
    for name, value, low in (("steps", steps, 1), ("num_particles", num_particles, 1), ("n_draws", n_draws, 2),
                             ("elbo_particles", elbo_particles, 2)):  # fmt: skip
        if not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(f"`optimizer` must be an optax GradientTransformation, got {type(optimizer).__name__}.")
    _check_choice(likelihood, "likelihood", LIKELIHOODS)
    _check_choice(filter, "filter", FILTERS)
    check_spec(model, spec)
    data = prepare_data(model, ys, us, ts, x0)
    init = _as_init(model, spec, init)
    kwargs = tuple(sorted((guide_kwargs or {}).items(), key=lambda kv: kv[0]))
    kwargs = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs)
    losses, params, draws, elbo, elbo_se = _svi_run(
        model, spec, data, (likelihood, filter), guide, kwargs, optimizer, jnp.asarray(learning_rate, float), steps,
        num_particles, init, key, n_draws, elbo_particles,
    )  # fmt: skip
    return SVIResult(losses, params, draws, elbo, elbo_se, tuple(spec.labels(model)), model, data, spec, guide,
                     (likelihood, filter), kwargs)  # fmt: skip


def _as_init(model, spec, init):
    """Physical starting values ``(param,)`` from ``None``, an array or a result with ``.params``."""
    if init is None:
        return None
    init = getattr(init, "params", init)
    init = as_float_array(init, "init", ndim=1)
    if init.shape != (spec.size(model),):
        raise ValueError(f"`init` must have shape ({spec.size(model)},) (physical values), got {tuple(init.shape)}.")
    return init


# ---------------------------------------------------------------------------------------------------------------------
# NUTS


class NUTSInfo(eqx.Module):
    """Per-draw diagnostics of :func:`run_nuts`, each ``(chains, draws)``, and the adapted step size ``(chains,)``."""

    is_divergent: Array
    acceptance_rate: Array
    num_integration_steps: Array
    step_size: Array


def run_nuts(
    logdensity_fn: Callable,
    z_init: Float[Array, "chains param"],
    key: Key,
    *,
    warmup: int,
    samples: int,
    target_accept: Scalar = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
) -> tuple[Float[Array, "chains draws param"], NUTSInfo]:
    """NUTS with Stan's window adaptation (step size and diagonal mass matrix) on each chain, chains vmapped.

    Pure and unjitted, so it can be vmapped again (over datasets) and compiled by the caller.

    Arguments:
        logdensity_fn: the log density of the unconstrained vector ``z``.
        z_init: one starting point per chain ``(chains, param)``.
        key: PRNG key.
        warmup: adaptation steps (discarded); samples: draws kept per chain.
        target_accept: the target mean acceptance of the dual-averaging step-size adaptation.
        max_tree_depth: the most trajectory doublings (``2**max_tree_depth`` leapfrog steps at most).
        dense_mass: adapt a dense mass matrix (the posterior covariance, for correlated parameters) instead of a
            diagonal one.

    Returns:
        ``(z, info)``: draws ``(chains, samples, param)`` and a :class:`NUTSInfo`.
    """

    def one_chain(k, z0):
        k_warm, k_samp = jax.random.split(k)
        adapt = blackjax.window_adaptation(
            blackjax.nuts,
            logdensity_fn,
            is_mass_matrix_diagonal=not dense_mass,
            target_acceptance_rate=target_accept,
            max_num_doublings=max_tree_depth,
        )
        (state, params), _ = adapt.run(k_warm, z0, num_steps=warmup)
        params = {**params, "max_num_doublings": max_tree_depth}  # the adapted parameters may already carry it
        kernel = blackjax.nuts(logdensity_fn, **params)

        def body(s, kk):
            s, info = kernel.step(kk, s)
            return s, (s.position, info.is_divergent, info.acceptance_rate, info.num_integration_steps)

        _, (zs, div, acc, nsteps) = jax.lax.scan(body, state, jax.random.split(k_samp, samples))
        return zs, div, acc, nsteps, params["step_size"]

    zs, div, acc, nsteps, step = jax.vmap(one_chain)(jax.random.split(key, z_init.shape[0]), z_init)
    return zs, NUTSInfo(div, acc, nsteps, step)


class MCMCResult(eqx.Module):
    """Posterior draws of NUTS and their diagnostics.

    Attributes:
        samples: draws of ``φ`` in physical units, ``(chains, draws, param)``.
        z: the same draws in the unconstrained space.
        rhat: split R-hat per parameter ``(param,)`` (of the physical draws); ess: effective sample size ``(param,)``.
        divergences: divergent transitions per chain ``(chains,)``; acceptance: mean acceptance per chain.
        step_size: adapted step size per chain; num_steps: mean leapfrog steps per draw and chain.
        labels: one label per parameter entry.
    """

    samples: Float[Array, "chains draws param"]
    z: Float[Array, "chains draws param"]
    rhat: Float[Array, " param"]
    ess: Float[Array, " param"]
    divergences: Int[Array, " chains"]
    acceptance: Float[Array, " chains"]
    step_size: Float[Array, " chains"]
    num_steps: Float[Array, " chains"]
    labels: tuple[str, ...] = eqx.field(static=True)

    @property
    def draws(self) -> Float[Array, "n param"]:
        """All draws with the chains pooled, ``(chains * draws, param)``."""
        return self.samples.reshape(-1, self.samples.shape[-1])

    @property
    def mean(self) -> Float[Array, " param"]:
        return jnp.mean(self.draws, axis=0)

    @property
    def sd(self) -> Float[Array, " param"]:
        return jnp.std(self.draws, axis=0, ddof=1)

    def interval(self, level: float = 0.9) -> Float[Array, "2 param"]:
        """The central credible interval ``[q_{(1-level)/2}, q_{(1+level)/2}]`` per parameter, ``(2, param)``."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
        return jnp.quantile(self.draws, jnp.array([(1 - level) / 2, (1 + level) / 2]), axis=0)

    def summary(self, level: float = 0.9) -> str:
        """A table: mean, sd, the central ``level`` interval, ESS and R-hat per parameter, and the divergences."""
        lo, hi = np.asarray(self.interval(level))
        mean, sd, ess_, rhat_ = (np.asarray(a) for a in (self.mean, self.sd, self.ess, self.rhat))
        width = max(9, *(len(s) for s in self.labels))
        q = f"{50 * (1 - level):.1f}%", f"{50 * (1 + level):.1f}%"
        head = f"{'':<{width}} {'mean':>11} {'sd':>11} {q[0]:>11} {q[1]:>11} {'ess':>8} {'r_hat':>7}"
        rows = [head]
        for i, name in enumerate(self.labels):
            rows.append(
                f"{name:<{width}} {mean[i]:>11.4g} {sd[i]:>11.4g} {lo[i]:>11.4g} {hi[i]:>11.4g} "
                f"{ess_[i]:>8.0f} {rhat_[i]:>7.3f}"
            )
        rows.append(f"divergences: {int(np.sum(np.asarray(self.divergences)))} of {self.samples.shape[:2]} draws")
        return "\n".join(rows)


def initial_positions(model, spec: Params, init, key: Key, chains: int) -> Float[Array, "chains param"]:
    """Unconstrained starting points: prior draws, or ``init`` with a small jitter (0.1 in ``z``)."""
    if init is None:
        phi = spec.sample(key, model, chains)
        return jax.vmap(lambda p: spec.to_unconstrained(spec.with_values(model, p)))(phi)
    z = spec.to_unconstrained(spec.with_values(model, init))
    return z + 0.1 * jax.random.normal(key, (chains, z.shape[0]), z.dtype)


def mcmc_result(model, spec, zs, info: NUTSInfo, labels) -> MCMCResult:
    """Constrain NUTS draws and compute their diagnostics (pure, vmappable)."""
    phis = jax.vmap(jax.vmap(lambda z: spec.constrain(model, z)))(zs)
    return MCMCResult(
        samples=phis,
        z=zs,
        rhat=rhat(phis),
        ess=ess(phis),
        divergences=jnp.sum(info.is_divergent, axis=1).astype(jnp.int32),
        acceptance=jnp.mean(info.acceptance_rate, axis=1),
        step_size=info.step_size,
        num_steps=jnp.mean(info.num_integration_steps, axis=1).astype(zs.dtype),
        labels=labels,
    )


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)
def _nuts_run(
    model, spec, data, likelihood, init, key, chains, warmup, samples, target_accept, max_tree_depth, dense_mass, labels
):
    k_init, k_run = jax.random.split(key)
    z0 = initial_positions(model, spec, init, k_init, chains)
    logdensity = functools.partial(log_density, model, spec, data, *likelihood)
    zs, info = run_nuts(
        logdensity, z0, k_run, warmup=warmup, samples=samples, target_accept=target_accept,
        max_tree_depth=max_tree_depth, dense_mass=dense_mass,
    )  # fmt: skip
    return mcmc_result(model, spec, zs, info, labels)


def nuts(
    model,
    spec: Params,
    ys,
    us=None,
    ts=None,
    *,
    key: Key,
    chains: int = 4,
    warmup: int = 500,
    samples: int = 1000,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    dense_mass: bool = False,
    likelihood: str = "ode",
    filter: str = "ekf",
    x0=None,
    init=None,
) -> MCMCResult:
    r"""Sample ``p(φ | y)`` with blackjax NUTS: window adaptation, then ``samples`` draws on each of ``chains`` chains.

    The target is :func:`log_posterior` in the unconstrained space; the chains are vmapped in one compiled call
    (repeated calls with the same shapes, spec and settings do not recompile). Draws are returned in physical units
    with split R-hat and the effective sample size (:func:`rhat`, :func:`ess`), divergences and acceptance rates.

    Arguments:
        model, spec, ys, us, ts, likelihood, filter, x0: the posterior (see :func:`numpyro_model`).
        key: PRNG key.
        chains: independent chains; warmup: adaptation steps per chain; samples: kept draws per chain (>= 4).
        target_accept: the target acceptance rate of the step-size adaptation.
        max_tree_depth: the most trajectory doublings per draw.
        dense_mass: adapt a dense mass matrix (strongly correlated parameters) instead of a diagonal one.
        init: where the chains start: physical values ``(param,)`` or a fit result with ``.params`` (then jittered by
            0.1 in the unconstrained space); default independent draws from the prior.

    Returns:
        An :class:`MCMCResult` (``samples (chains, draws, param)``, ``rhat``, ``ess``, ``divergences``, ``summary()``).

    Raises:
        ValueError: for non-positive ``chains`` / ``warmup``, ``samples < 4``, ``target_accept`` outside (0, 1), and as
            :func:`numpyro_model`.

    Example:
        ```python
        post = nuts(twin, spec, ys, us, key=jax.random.key(0), chains=4, warmup=500, samples=1000)
        print(post.summary())
        ```

    References:
        M. D. Hoffman, A. Gelman, "The No-U-Turn Sampler", JMLR 15, 2014; Stan Reference Manual, "MCMC sampling".
    """
    for name, value, low in (("chains", chains, 1), ("warmup", warmup, 1), ("samples", samples, 4)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"`target_accept` must be in (0, 1), got {target_accept!r}.")
    _check_choice(likelihood, "likelihood", LIKELIHOODS)
    _check_choice(filter, "filter", FILTERS)
    check_spec(model, spec)
    data = prepare_data(model, ys, us, ts, x0)
    init = _as_init(model, spec, init)
    return _nuts_run(
        model, spec, data, (likelihood, filter), init, key, chains, warmup, samples,
        jnp.asarray(target_accept, float), max_tree_depth, bool(dense_mass), tuple(spec.labels(model)),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# convergence diagnostics


def _check_draws(x, name="samples"):
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"`{name}` must have shape (chains, draws, ...), got {tuple(x.shape)}.")
    return x


def _chain_variance_stats(x):
    n = x.shape[1]
    var_within = jnp.mean(jnp.var(x, axis=1, ddof=1), axis=0)
    var_estimator = var_within * (n - 1) / n
    if x.shape[0] > 1:
        var_estimator = var_estimator + jnp.var(jnp.mean(x, axis=1), axis=0, ddof=1)
    else:
        var_within = var_estimator
    return var_within, var_estimator


@jax.jit
def _rhat(x):
    half = x.shape[1] // 2
    x = jnp.concatenate([x[:, :half], x[:, -half:]], axis=0)
    var_within, var_estimator = _chain_variance_stats(x)
    return jnp.sqrt(var_estimator / var_within)


def rhat(samples: Float[ArrayLike, "chains draws *shape"]) -> Float[Array, " *shape"]:
    r"""Split R-hat: each chain cut in halves, then ``√(V̂ / W)`` with ``W`` the mean within-half variance and
    ``V̂ = (n-1)/n W + B/n`` (``B/n`` the variance of the half means). Near 1 when the chains agree.

    Arguments:
        samples: draws ``(chains, draws, ...)`` with ``draws >= 4``.

    Returns:
        R-hat per trailing entry.

    Raises:
        ValueError: for fewer than two dimensions or fewer than 4 draws.

    Example:
        ```python
        rhat(post.samples)   # (param,)
        ```

    References:
        A. Gelman et al., *Bayesian Data Analysis*, 3rd ed., §11.4 (numpyro's ``split_gelman_rubin``).
    """
    x = _check_draws(samples)
    if x.shape[1] < 4:
        raise ValueError(f"`samples` needs at least 4 draws per chain for split R-hat, got {x.shape[1]}.")
    return _rhat(x)


def _fast_len(target: int) -> int:
    """The smallest ``n >= target`` whose only prime factors are 2, 3 and 5 (an efficient FFT length)."""
    if target <= 2:
        return target
    while True:
        m = target
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return target
        target += 1


def _autocovariance(x, axis: int):
    """Biased autocovariance along ``axis`` by FFT (zero-padded to avoid circular wrap)."""
    n = x.shape[axis]
    m2 = 2 * _fast_len(n)
    x = jnp.moveaxis(x, axis, -1)
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    f = jnp.fft.rfft(centred, n=m2, axis=-1)
    acov = jnp.fft.irfft(f * jnp.conj(f), n=m2, axis=-1)[..., :n] / n
    return jnp.moveaxis(acov, -1, axis)


def ess(samples: Float[ArrayLike, "chains draws *shape"]) -> Float[Array, " *shape"]:
    r"""Effective sample size ``N / τ`` over all chains, ``τ = -1 + 2 Σ_k P_k`` with Geyer's initial monotone sequence.

    The autocorrelation at lag ``t`` combines chains as in Stan, ``ρ_t = 1 - (W - mean_c γ_{t,c}) / V̂``; the paired
    sums ``P_k = ρ_{2k} + ρ_{2k+1}`` are clipped at zero and made non-increasing (the initial monotone sequence).

    Arguments:
        samples: draws ``(chains, draws, ...)`` with ``draws >= 2``.

    Returns:
        The effective sample size per trailing entry.

    Raises:
        ValueError: for fewer than two dimensions or fewer than 2 draws.

    Example:
        ```python
        ess(post.samples)    # (param,)
        ```

    References:
        C. J. Geyer, "Practical Markov chain Monte Carlo", Stat. Sci. 7, 1992; Stan Reference Manual, "Effective
        sample size" (numpyro's ``effective_sample_size``).
    """
    x = _check_draws(samples)
    if x.shape[1] < 2:
        raise ValueError(f"`samples` needs at least 2 draws per chain for the ESS, got {x.shape[1]}.")
    return _ess(x)


@jax.jit
def _ess(x):
    gamma = _autocovariance(x, axis=1)
    var_within, var_estimator = _chain_variance_stats(x)
    rho = 1.0 - (var_within - jnp.mean(gamma, axis=0)) / var_estimator
    rho = rho.at[0].set(1.0)
    pairs = rho[:-1:2] + rho[1::2]
    tail = jax.lax.cummin(jnp.clip(pairs[1:], 0.0, None), axis=0)
    pairs = jnp.concatenate([pairs[:1], tail], axis=0)
    tau = -1.0 + 2.0 * jnp.sum(pairs, axis=0)
    return x.shape[0] * x.shape[1] / tau


# ---------------------------------------------------------------------------------------------------------------------
# posterior predictive


class PredictiveBands(eqx.Module):
    """Posterior-predictive quantile bands of the measurements.

    Attributes:
        ts: times ``(time,)``.
        median: the pointwise median ``(time, obs)``.
        lower, upper: the central bands, ``(level, time, obs)``, one per entry of ``levels``.
        samples: the predictive draws ``(draws, time, obs)``.
        status: the solve status per draw ``(draws,)`` (failed draws are left out of the quantiles).
        levels: the probability mass of each band.
    """

    ts: Float[Array, " time"]
    median: Float[Array, "time obs"]
    lower: Float[Array, "level time obs"]
    upper: Float[Array, "level time obs"]
    samples: Float[Array, "draws time obs"]
    status: Int[Array, " draws"]
    levels: tuple[float, ...] = eqx.field(static=True)

    def band(self, level: float) -> tuple[Float[Array, "time obs"], Float[Array, "time obs"]]:
        """``(lower, upper)`` of the band with mass ``level`` (one of ``levels``)."""
        if level not in self.levels:
            raise ValueError(f"`level` must be one of {self.levels}, got {level!r}.")
        i = self.levels.index(level)
        return self.lower[i], self.upper[i]


@eqx.filter_jit
def _predictive(model, spec, draws, x0, ts, us, key, probs, noise: bool):
    def one(phi, k):
        twin = spec.with_values(model, phi)
        if not noise:
            twin = eqx.tree_at(lambda m: m.process_noise, twin, None, is_leaf=lambda v: v is None)
        path = simulate(twin, x0, ts, controls=us, key=k, throw=False)
        ys = path.ys
        if not noise:
            ys = jax.vmap(twin.observation.mean)(ts, path.xs, path.us)
        return ys, path.status

    ys, status = jax.vmap(one)(draws, jax.random.split(key, draws.shape[0]))
    good = (status == Status.successful)[:, None, None]
    q = jnp.nanquantile(jnp.where(good, ys, jnp.nan), probs, axis=0)
    return ys, status, q


def posterior_predictive(
    model,
    spec: Params,
    draws,
    ts,
    us=None,
    *,
    key: Key,
    x0=None,
    levels: tuple[float, ...] = (0.5, 0.9),
    max_draws: int | None = 1000,
    noise: bool = True,
) -> PredictiveBands:
    r"""Posterior-predictive bands: ``y ~ p(y | φ)`` for each posterior draw ``φ``, then pointwise quantiles.

    Each draw is one vmapped :func:`~twinjax.simulate` rollout of the twin with parameters ``φ`` from ``x0`` with
    sensor noise (and the twin's process noise, if any), so the bands are those of ``p(y_new | y) = ∫ p(y_new | φ)
    p(φ | y) dφ``. With ``noise=False`` they are bands of the noise-free sensor mean ``h(x(φ))`` (parameter
    uncertainty alone).

    Arguments:
        model: the twin; spec: its parameter spec.
        draws: physical parameter draws ``(n, param)`` (or ``(chains, n, param)``), or an :class:`MCMCResult` /
            :class:`SVIResult`.
        ts: prediction times ``(time,)``; us: controls ``(time, control)`` as for :func:`~twinjax.simulate`.
        key: PRNG key.
        x0: the initial state ``(state,)``; default the mean of ``model.initial`` (as the ``"ode"`` likelihood).
        levels: the probability masses of the central bands.
        max_draws: use at most this many draws (evenly thinned).
        noise: include the sensor (and process) noise.

    Returns:
        :class:`PredictiveBands` (``median``, ``lower``, ``upper``, ``samples``, ``status``).

    Raises:
        ValueError: for a level outside (0, 1), draws of the wrong width, or as :func:`~twinjax.simulate`.

    Example:
        ```python
        bands = posterior_predictive(twin, spec, post, ts, us, key=jax.random.key(1))
        plot_predictive_bands(ax, bands, ys)
        ```
    """
    levels = tuple(float(v) for v in levels)
    if not levels or any(not 0.0 < v < 1.0 for v in levels):
        raise ValueError(f"`levels` must be probabilities in (0, 1), got {levels!r}.")
    if isinstance(draws, (MCMCResult, SVIResult)):
        draws = draws.draws
    draws = as_float_array(draws, "draws")
    draws = draws.reshape(-1, draws.shape[-1]) if draws.ndim == 3 else draws
    if draws.ndim != 2 or draws.shape[1] != spec.size(model):
        raise ValueError(f"`draws` must have shape (n, {spec.size(model)}) (physical values), got {draws.shape}.")
    if max_draws is not None and draws.shape[0] > max_draws:
        draws = draws[:: -(-draws.shape[0] // max_draws)]
    if x0 is None:
        if model.initial is None:
            raise ValueError("`x0` is required: the model has no `initial` distribution.")
        x0 = model.initial.mean
    x0 = as_float_array(x0, "x0", ndim=1)
    ts = as_float_array(ts, "ts", ndim=1)
    probs = [0.5] + [p for v in levels for p in ((1 - v) / 2, (1 + v) / 2)]
    ys, status, q = _predictive(model, spec, draws, x0, ts, us, key, jnp.asarray(probs), noise)
    lower, upper = q[1::2], q[2::2]
    return PredictiveBands(ts, q[0], lower, upper, ys, status, levels)


def plot_predictive_bands(
    ax, bands: PredictiveBands, ys=None, *, channel: int = 0, color: str = "C0", label: str | None = None
):
    """Draw the bands of one measured channel (widest first), the median, and the data ``ys`` (time, obs) on ``ax``.

    Returns ``ax``. Example: ``plot_predictive_bands(plt.subplots()[1], bands, ys, channel=0)``.
    """
    t = np.asarray(bands.ts)
    order = np.argsort(bands.levels)[::-1]
    for i in order:
        level = bands.levels[i]
        ax.fill_between(
            t,
            np.asarray(bands.lower[i][:, channel]),
            np.asarray(bands.upper[i][:, channel]),
            color=color,
            alpha=0.15 + 0.25 * (1 - level),
            lw=0,
            label=f"{int(round(100 * level))} % predictive",
        )
    ax.plot(t, np.asarray(bands.median[:, channel]), color=color, lw=1.2, label=label or "predictive median")
    if ys is not None:
        y = np.asarray(ys)
        y = y[:, channel] if y.ndim == 2 else y
        ax.plot(t, y, ".", color="k", ms=2.5, label="data")
    ax.set_xlabel("time (s)")
    return ax


__all__ = [
    "FILTERS",
    "GUIDES",
    "LIKELIHOODS",
    "Data",
    "MCMCResult",
    "NUTSInfo",
    "PredictiveBands",
    "SVIResult",
    "check_spec",
    "ess",
    "initial_positions",
    "log_density",
    "log_likelihood",
    "log_posterior",
    "mcmc_result",
    "numpyro_model",
    "nuts",
    "plot_predictive_bands",
    "posterior_predictive",
    "prepare_data",
    "rhat",
    "run_nuts",
    "svi",
]
