r"""The online twin: a live belief over the state, updated one measurement at a time, and forecasts with uncertainty.

:class:`OnlineTwin` is a thin stateful shell over the pure one-step filter functions (``<name>_init``,
``<name>_predict``, ``<name>_update``, ``<name>_step``): it holds the current filter state and a history, and calls
the step function through one module-level ``eqx.filter_jit`` — compiled once per (model, filter, shapes), never per
measurement. Everything numerical stays in the pure functions; streamed results therefore equal the batch filters
(``extended_kalman_filter`` & co. on the same times) to rounding.

Times are those of the measurements and may be irregular: each new measurement at ``t`` is preceded by a prediction
over the actual interval ``[t_prev, t]`` — for a continuous twin the diffrax solve over that interval, i.e.
continuous–discrete filtering. Controls follow the library's convention: the ``u`` given with a measurement enters
the sensor now and is held until the next measurement.

Filters are looked up by name in a small registry (:func:`filter_names`, :func:`register_filter`): ``"kf"``,
``"ekf"``, ``"ukf"`` (options ``alpha``, ``beta``, ``kappa``), ``"pf"`` (``particles``, ``resample_threshold``,
``regularisation``, ``jitter``), ``"enkf"`` (``members``, ``ensemble``, ``method``, ``inflation``, ``rotation``,
``localisation``) and its square-root variants ``"etkf"``, ``"denkf"``, ``"letkf"`` (the same options but ``method``).

References:
    S. Särkkä, *Bayesian Filtering and Smoothing*, Cambridge University Press, 2013, §4.3, §5.2, §9.1
    (continuous–discrete filtering); chapter 001, "The Probabilistic Foundation of the Digital Twin".
"""

import collections
import dataclasses
import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from .._checks import as_float_array
from .._types import Array, Bool, Float, Int, Scalar
from ..model.status import Status
from . import ensemble as ensemble_, kalman, nonlinear, particle
from ._base import check_model
from .sensorlog import SensorLog

# Python-side counters of how often each compiled entry point was traced (tests assert one trace per shape).
_TRACES: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class FilterFamily:
    """The one-step functions of one filter, as :class:`OnlineTwin` calls them.

    Attributes:
        init: ``init(model, key, *, mean, cov, t0, u0, **init_options) -> state``.
        predict: ``predict(model, state, t, **predict_options) -> state`` (must keep ``state.u``).
        update: ``update(model, state, y, u, **update_options) -> (state, info)``.
        step: ``step(model, state, y, u, *, t, **predict_options, **update_options) -> (state, info)``.
        summary: ``summary(state, info) -> (mean, cov)``: the filtered moments recorded in the history.
        init_options, predict_options, update_options: the keyword options each phase accepts.
        needs_key: whether ``init`` needs a PRNG key (ensemble and particle filters).
    """

    init: Callable
    predict: Callable
    update: Callable
    step: Callable
    summary: Callable
    init_options: frozenset = frozenset()
    predict_options: frozenset = frozenset()
    update_options: frozenset = frozenset()
    needs_key: bool = False


def _moments(state, info):
    return state.mean, state.cov


def _particle_moments(state, info):
    # the weighted cloud before resampling: the lower-variance estimate (what `particle_filter` reports)
    mean = particle.weighted_mean(info.particles, info.log_weights)
    return mean, particle.weighted_covariance(info.particles, info.log_weights)


def _gaussian_init(init):
    def fn(model, key, *, mean, cov, t0, u0):
        return init(model, mean=mean, cov=cov, t0=t0, u0=u0)

    return fn


def _pf_init(model, key, *, mean, cov, t0, u0, particles=1000):
    return particle.pf_init(model, key, particles, mean=mean, cov=cov, t0=t0, u0=u0)


def _enkf_init(model, key, *, mean, cov, t0, u0, members=None, ensemble=None):
    return ensemble_.enkf_init(model, key, members, mean=mean, cov=cov, ensemble=ensemble, t0=t0, u0=u0)


def _enkf_family(method: str | None) -> FilterFamily:
    """The ensemble filters; ``method=None`` leaves ``method`` an option (default: the stochastic EnKF)."""
    update, step = ensemble_.enkf_update, ensemble_.enkf_step
    options = {"inflation", "rotation", "localisation"}
    if method is None:
        options.add("method")
    else:
        update = functools.partial(update, method=method)
        step = functools.partial(step, method=method)
    return FilterFamily(
        _enkf_init,
        ensemble_.enkf_predict,
        update,
        step,
        _moments,
        init_options=frozenset({"members", "ensemble"}),
        update_options=frozenset(options),
        needs_key=True,
    )


_UKF = frozenset({"alpha", "beta", "kappa"})
_REGISTRY: dict[str, FilterFamily] = {
    "kf": FilterFamily(_gaussian_init(kalman.kf_init), kalman.kf_predict, kalman.kf_update, kalman.kf_step, _moments),
    "ekf": FilterFamily(
        _gaussian_init(nonlinear.ekf_init), nonlinear.ekf_predict, nonlinear.ekf_update, nonlinear.ekf_step, _moments
    ),
    "ukf": FilterFamily(
        _gaussian_init(nonlinear.ukf_init),
        nonlinear.ukf_predict,
        nonlinear.ukf_update,
        nonlinear.ukf_step,
        _moments,
        predict_options=_UKF,
        update_options=_UKF,
    ),
    "pf": FilterFamily(
        _pf_init,
        particle.pf_predict,
        particle.pf_update,
        particle.pf_step,
        _particle_moments,
        init_options=frozenset({"particles"}),
        update_options=frozenset({"resample_threshold", "regularisation", "jitter"}),
        needs_key=True,
    ),
    "enkf": _enkf_family(None),
    "etkf": _enkf_family("etkf"),
    "denkf": _enkf_family("denkf"),
    "letkf": _enkf_family("letkf"),
}


def register_filter(name, family) -> None:
    """Make a filter available to :class:`OnlineTwin` under ``name`` (replacing any filter of that name).

    Raises:
        ValueError: if ``name`` is not a non-empty string or ``family`` is not a :class:`FilterFamily`.

    Example:
        ```python
        sigma = dict(alpha=3**0.5, beta=2.0, kappa=1.0)  # dynamax's unscented parameters, fixed
        register_filter("ukf-dynamax", FilterFamily(
            init=lambda model, key, **prior: ukf_init(model, **prior),
            predict=functools.partial(ukf_predict, **sigma),
            update=functools.partial(ukf_update, **sigma),
            step=functools.partial(ukf_step, **sigma),
            summary=lambda state, info: (state.mean, state.cov),
        ))
        twin = OnlineTwin(model, "ukf-dynamax")
        ```
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}.")
    if not isinstance(family, FilterFamily):
        raise ValueError(f"`family` must be a FilterFamily, got {type(family).__name__}.")
    _REGISTRY[name] = family


def filter_names() -> tuple[str, ...]:
    """The names :class:`OnlineTwin` accepts as ``filter``."""
    return tuple(sorted(_REGISTRY))


# ---------------------------------------------------------------------------------------------------------------------
# results


class OnlineHistory(eqx.Module):
    """What an :class:`OnlineTwin` has assimilated so far (or in one :meth:`OnlineTwin.assimilate_log` call).

    Attributes:
        ts: the measurement times ``(time,)`` (s).
        means, covariances: the filtered moments ``p(x_k | y_{0:k})``, ``(time, state)`` and ``(time, state, state)``.
        log_likelihoods: the increments ``log p(y_k | y_{0:k-1})``, ``(time,)``.
        status: the worst :class:`~twinjax.Status` of the transitions up to each step, ``(time,)``.
    """

    ts: Float[Array, " time"]
    means: Float[Array, "time state"]
    covariances: Float[Array, "time state state"]
    log_likelihoods: Float[Array, " time"]
    status: Int[Array, " time"]

    @property
    def log_likelihood(self) -> Scalar:
        """The sum of the increments."""
        return jnp.sum(self.log_likelihoods)

    def __len__(self) -> int:
        return int(self.ts.shape[0])


class Forecast(eqx.Module):
    """Predicted beliefs ``p(x(t) | y_{0:k})`` at future times (no measurement assimilated).

    Attributes:
        ts: the forecast times ``(time,)`` (s).
        means, covariances: ``(time, state)`` and ``(time, state, state)``.
        status: the worst :class:`~twinjax.Status` of the transitions up to each time.
    """

    ts: Float[Array, " time"]
    means: Float[Array, "time state"]
    covariances: Float[Array, "time state state"]
    status: Int[Array, " time"]

    @property
    def stds(self) -> Float[Array, "time state"]:
        """Marginal standard deviations ``sqrt(diag P)``."""
        return jnp.sqrt(jnp.clip(jnp.diagonal(self.covariances, axis1=-2, axis2=-1), 0.0))

    def band(self, level: float = 0.95) -> tuple[Float[Array, "time state"], Float[Array, "time state"]]:
        """The central ``level`` credible band of each state component (Gaussian marginals): ``(lower, upper)``.

        Raises:
            ValueError: unless ``0 < level < 1``.
        """
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
        z = ndtri(0.5 + 0.5 * float(level))
        return self.means - z * self.stds, self.means + z * self.stds

    @property
    def ok(self) -> Bool[Array, ""]:
        """Whether every transition solve succeeded."""
        return jnp.all(self.status == Status.successful)


# ---------------------------------------------------------------------------------------------------------------------
# compiled entry points (module level: one compilation per model / filter / shapes, reused by every twin)


@eqx.filter_jit
def _update_jit(family, model, state, y, u, options):
    _TRACES["update"] += 1
    before = state.log_likelihood
    state, info = family.update(model, state, y, u, **options)
    mean, cov = family.summary(state, info)
    return state, info, (state.t, mean, cov, state.log_likelihood - before, state.status)


@eqx.filter_jit
def _step_jit(family, model, state, y, u, t, options):
    _TRACES["step"] += 1
    before = state.log_likelihood
    state, info = family.step(model, state, y, u, t=t, **options)
    mean, cov = family.summary(state, info)
    return state, info, (state.t, mean, cov, state.log_likelihood - before, state.status)


@eqx.filter_jit
def _scan_jit(family, model, state, ys, us, ts, options):
    _TRACES["scan"] += 1

    def body(state, inputs):
        y, u, t = inputs
        before = state.log_likelihood
        state, info = family.step(model, state, y, u, t=t, **options)
        mean, cov = family.summary(state, info)
        return state, (state.t, mean, cov, state.log_likelihood - before, state.status)

    return jax.lax.scan(body, state, (ys, us, ts))


@eqx.filter_jit
def _forecast_jit(family, model, state, ts, us, options):
    _TRACES["forecast"] += 1

    def body(state, inputs):
        t, u = inputs
        state = family.predict(model, state, t, **options)
        out = (state.mean, state.cov, state.status)
        return eqx.tree_at(lambda s: s.u, state, u), out

    _, (means, covs, status) = jax.lax.scan(body, state, (ts, us))
    return means, covs, status


# ---------------------------------------------------------------------------------------------------------------------
# the twin


class OnlineTwin:
    r"""A live twin: assimilates a stream of measurements one at a time and forecasts with uncertainty.

    The state of the filter is held here; the numerics are the pure one-step functions of the chosen filter, compiled
    once. For a measurement ``y`` at time ``t`` with control ``u``:

    - the first measurement updates the prior directly when ``t0`` was not given (the prior then describes the state
      at the first measurement time, as in the batch filters) or when ``t == t0``; otherwise it is preceded by a
      prediction from ``t0``;
    - every later one is a prediction over ``[t_prev, t]`` with the control held since ``t_prev``, then the update
      with ``y`` and ``u`` (``u`` enters the sensor now and is held from now on).

    Arguments:
        model: the twin (:class:`~twinjax.StateSpaceModel` or :class:`~twinjax.LinearGaussianSSM`) with a sensor.
        filter: the filter's name, one of :func:`filter_names` (``"kf"``, ``"ekf"``, ``"ukf"``, ``"pf"``, ensemble
            filters).
        key: PRNG key for ensemble and particle filters (required there, unused otherwise).
        mean, cov: the prior (default ``model.initial``).
        t0: the time of the prior (s); default: the time of the first measurement.
        u0: the control held from ``t0`` (default zeros).
        keep_history: record every filtered belief in :attr:`history` (turn off for endless streams).
        **filter_kwargs: options of the filter, e.g. ``alpha`` for the UKF, ``particles`` / ``regularisation`` for the
            particle filter, ``members`` / ``inflation`` for ensemble filters.

    Attributes:
        state: the filter state (a pytree: it can be saved, copied, vmapped).
        mean, cov: the current belief's moments; ``t``: its time (s); ``log_likelihood``: ``log p(y_{0:k})``.
        history: an :class:`OnlineHistory` of everything assimilated.

    Raises:
        ValueError: an unknown ``filter`` (listing the known ones), an option the filter does not take, or a missing
            ``key`` for a stochastic filter.

    Example:
        ```python
        twin = OnlineTwin(pendulum_twin(), "ekf")
        for t, y, u in sensor_stream:
            twin.assimilate(y, u, t=t)
        ahead = twin.forecast(twin.t + jnp.linspace(0.1, 2.0, 20))
        lower, upper = ahead.band(0.95)
        ```
    """

    def __init__(
        self,
        model,
        filter: str = "ekf",
        *,
        key=None,
        mean=None,
        cov=None,
        t0=None,
        u0=None,
        keep_history: bool = True,
        **filter_kwargs,
    ):
        self.model = check_model(model)
        if filter not in _REGISTRY:
            raise ValueError(f"`filter` must be one of {list(filter_names())}, got {filter!r}.")
        family = _REGISTRY[filter]
        known = family.init_options | family.predict_options | family.update_options
        unknown = sorted(set(filter_kwargs) - known)
        if unknown:
            raise ValueError(
                f"filter {filter!r} takes no option(s) {unknown}; its options are {sorted(known) or 'none'}."
            )
        if family.needs_key and key is None:
            raise ValueError(f"`key` is required: the {filter!r} filter is stochastic.")
        self.filter = filter
        self._family = family
        self._predict_options = {k: v for k, v in filter_kwargs.items() if k in family.predict_options}
        self._update_options = {k: v for k, v in filter_kwargs.items() if k in family.update_options}
        self._step_options = {**self._predict_options, **self._update_options}
        init_options = {k: v for k, v in filter_kwargs.items() if k in family.init_options}
        self._t0_given = t0 is not None
        t_init = 0.0 if t0 is None else float(t0)
        self._state = family.init(self.model, key, mean=mean, cov=cov, t0=t_init, u0=u0, **init_options)
        self._dtype = self._state.t.dtype
        self._t = t_init
        self._count = 0
        self._obs_dim = int(
            jax.eval_shape(self.model.observation.mean, self._state.t, self._state.mean, self._state.u).shape[0]
        )
        self._keep_history = bool(keep_history)
        self._chunks: list = []

    # -- read-only views ------------------------------------------------------------------------------------------

    @property
    def state(self):
        """The current filter state (immutable pytree)."""
        return self._state

    @property
    def mean(self) -> Float[Array, " state"]:
        """The mean of the current belief."""
        return self._state.mean

    @property
    def cov(self) -> Float[Array, "state state"]:
        """The covariance of the current belief."""
        return self._state.cov

    @property
    def t(self) -> float:
        """The time (s) of the current belief."""
        return self._t

    @property
    def log_likelihood(self) -> Scalar:
        """``log p(y_{0:k})`` of everything assimilated so far."""
        return self._state.log_likelihood

    @property
    def num_assimilated(self) -> int:
        """How many measurements have been assimilated."""
        return self._count

    @property
    def history(self) -> OnlineHistory:
        """Every filtered belief so far, stacked over time (empty arrays before the first measurement)."""
        if not self._keep_history:
            raise ValueError("this OnlineTwin was created with keep_history=False.")
        if not self._chunks:
            n = self._state.mean.shape[0]
            d = self._dtype
            empty = (jnp.zeros((0,), d), jnp.zeros((0, n), d), jnp.zeros((0, n, n), d), jnp.zeros((0,), d))
            return OnlineHistory(*empty, jnp.zeros((0,), jnp.int32))
        fields = [jnp.concatenate(parts) for parts in zip(*self._chunks)]
        self._chunks = [fields]  # later reads (and appends) start from the concatenated record
        return OnlineHistory(*fields)

    def __repr__(self) -> str:
        return (
            f"OnlineTwin(filter={self.filter!r}, t={self._t!r}, assimilated={self._count}, "
            f"state_dim={self._state.mean.shape[0]}, obs_dim={self._obs_dim})"
        )

    # -- assimilation ---------------------------------------------------------------------------------------------

    def assimilate(self, y, u=None, t=None):
        """Assimilate one measurement ``y`` taken at time ``t`` with control ``u``.

        Arguments:
            y: the measurement ``(obs,)`` (a scalar for one channel); ``NaN`` marks a missing channel, all ``NaN`` is
                a predict-only step.
            u: the control now (it enters the sensor and is held until the next measurement), ``(control,)``;
                default: the control held so far.
            t: the measurement time (s), after the previous one; default: the previous time plus ``model.dt`` (for
                the first measurement: ``t0``, or 0).

        Returns:
            The filter's per-step info (an :class:`~twinjax.inference.Innovation` for the Gaussian filters).

        Raises:
            ValueError: a ``y`` or ``u`` of the wrong shape, an infinite ``y``, a ``t`` that is not after the
                previous measurement, or no ``t`` for a model without ``dt``.
        """
        y = self._check_y(y)
        u = self._check_u(u)
        t = self._next_time(t)
        if self._first_is_update(t):
            state = eqx.tree_at(lambda s: s.t, self._state, jnp.asarray(t, self._dtype))
            state, info, record = _update_jit(self._family, self.model, state, y, u, self._update_options)
        else:
            tt = jnp.asarray(t, self._dtype)
            state, info, record = _step_jit(self._family, self.model, self._state, y, u, tt, self._step_options)
        self._commit(state, t, 1, [r[None] for r in record])
        return info

    def assimilate_log(self, log, us=None) -> OnlineHistory:
        """Assimilate a whole :class:`~twinjax.inference.SensorLog` (or an ``(ts, ys, us)`` tuple) in one compiled
        scan — the same arithmetic as calling :meth:`assimilate` for each row.

        Arguments:
            log: a :class:`SensorLog` (its ``channels`` in the model's observation order) or a tuple ``(ts, ys)`` /
                ``(ts, ys, us)`` of arrays.
            us: the controls ``(time, control)`` when ``log`` has none; default: the log's controls, else the control
                held so far for every row.

        Returns:
            The :class:`OnlineHistory` of this log alone (:attr:`history` holds everything).

        Raises:
            ValueError: a log whose number of channels or controls differs from the model's, or whose first time is
                not after the last assimilated measurement.
        """
        if isinstance(log, SensorLog):
            ts, ys, log_us = log.ts, log.ys, log.us
            what = f"the log's channels {list(log.channels)}"
        else:
            if not isinstance(log, tuple) or len(log) not in (2, 3):
                raise ValueError(f"`log` must be a SensorLog or a tuple (ts, ys[, us]), got {type(log).__name__}.")
            ts, ys, log_us = (*log, None)[:3]
            what = "`ys`"
        ts = np.asarray(ts, np.float64)
        ys = np.asarray(ys, np.float64)
        if ys.ndim == 1:
            ys = ys[:, None]
        if ts.ndim != 1 or ys.ndim != 2 or ys.shape[0] != ts.shape[0]:
            raise ValueError(f"`log` times {ts.shape} and observations {ys.shape} must be (time,) and (time, obs).")
        if ys.shape[1] != self._obs_dim:
            raise ValueError(
                f"{what} give {ys.shape[1]} observations per row but the model's sensor has {self._obs_dim}."
            )
        if np.any(np.isinf(ys)):
            raise ValueError(
                f"`log` has infinite observations at (row, channel) {np.argwhere(np.isinf(ys))[:5].tolist()}."
            )
        if np.any(np.diff(ts) <= 0) or not np.all(np.isfinite(ts)):
            raise ValueError("`log` times must be finite and strictly increasing.")
        if us is not None and log_us is not None:
            raise ValueError("`us` given but the log has controls already.")
        us = log_us if us is None else us
        T = ts.shape[0]
        m = self.model.control_dim
        if us is None:
            us = np.broadcast_to(np.asarray(self._state.u), (T, m))
        else:
            us = np.asarray(as_float_array(us, "us"))
            if us.ndim == 1 and m == 1:
                us = us[:, None]
            if us.shape != (T, m):
                raise ValueError(
                    f"`us` (the log's controls) must have shape ({T}, {m}) (model.control_dim), got {us.shape}."
                )
            if not np.all(np.isfinite(us)):
                raise ValueError("`us` (the log's controls) must be finite.")
        self._check_after(float(ts[0]))
        d = self._dtype
        ys_j, us_j, ts_j = jnp.asarray(ys, d), jnp.asarray(us, d), jnp.asarray(ts, d)
        records = []
        state = self._state
        start = 0
        if self._first_is_update(float(ts[0])):
            state = eqx.tree_at(lambda s: s.t, state, ts_j[0])
            state, _, record = _update_jit(self._family, self.model, state, ys_j[0], us_j[0], self._update_options)
            records.append([r[None] for r in record])
            start = 1
        if start < T:
            state, record = _scan_jit(
                self._family, self.model, state, ys_j[start:], us_j[start:], ts_j[start:], self._step_options
            )
            records.append(list(record))
        chunk = [jnp.concatenate(parts) for parts in zip(*records)]
        self._commit(state, float(ts[-1]), T, chunk)
        return OnlineHistory(*chunk)

    def forecast(self, ts_ahead, us_ahead=None) -> Forecast:
        """Predict the belief at future times without assimilating anything (the twin's state is unchanged).

        The belief is propagated from :attr:`t` to ``ts_ahead[0]`` with the control held now, then from
        ``ts_ahead[k]`` to ``ts_ahead[k+1]`` with ``us_ahead[k]`` — the same repeated ``predict`` calls a filter makes,
        so the covariance grows with the process noise over each interval.

        Arguments:
            ts_ahead: strictly increasing future times ``(time,)`` (s), after :attr:`t`.
            us_ahead: planned controls ``(time, control)`` (or ``(time - 1, control)``), ``us_ahead[k]`` held from
                ``ts_ahead[k]``; default: hold the current control.

        Returns:
            A :class:`Forecast` with ``means``, ``covariances``, ``stds`` and ``band(level)``.

        Raises:
            ValueError: times not after :attr:`t` or not increasing, wrong ``us_ahead`` shape, or no time origin yet
                (no measurement and no ``t0``).
        """
        if self._count == 0 and not self._t0_given:
            raise ValueError("nothing to forecast from: assimilate a measurement first, or give the twin a `t0`.")
        ts = np.atleast_1d(np.asarray(ts_ahead, np.float64))
        if ts.ndim != 1 or ts.shape[0] == 0:
            raise ValueError(f"`ts_ahead` must be a non-empty 1-D array of times, got shape {ts.shape}.")
        if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) <= 0):
            raise ValueError(f"`ts_ahead` must be finite and strictly increasing, got {ts}.")
        if not ts[0] > self._t:
            raise ValueError(f"`ts_ahead` must be after the twin's time t = {self._t}, got ts_ahead[0] = {ts[0]}.")
        K, m = ts.shape[0], self.model.control_dim
        if us_ahead is None:
            us = np.broadcast_to(np.asarray(self._state.u), (K, m))
        else:
            us = np.asarray(as_float_array(us_ahead, "us_ahead"))
            if us.ndim == 1 and m == 1:
                us = us[:, None]
            if us.ndim == 2 and us.shape == (K - 1, m):
                us = np.concatenate([us, np.broadcast_to(np.asarray(self._state.u), (1, m))])
            if us.shape != (K, m):
                raise ValueError(f"`us_ahead` must have shape ({K}, {m}) (time, control), got {us.shape}.")
            if not np.all(np.isfinite(us)):
                raise ValueError("`us_ahead` must be finite.")
        d = self._dtype
        ts_j = jnp.asarray(ts, d)
        means, covs, status = _forecast_jit(
            self._family, self.model, self._state, ts_j, jnp.asarray(us, d), self._predict_options
        )
        return Forecast(ts_j, means, covs, status)

    # -- helpers --------------------------------------------------------------------------------------------------

    def _first_is_update(self, t: float) -> bool:
        return self._count == 0 and (not self._t0_given or t == self._t)

    def _check_after(self, t: float) -> None:
        if not math.isfinite(t):
            raise ValueError(f"`t` must be finite, got {t}.")
        if self._count and not t > self._t:
            raise ValueError(f"`t` = {t} must be after the last measurement's time {self._t}.")
        if not self._count and self._t0_given and t < self._t:
            raise ValueError(f"`t` = {t} is before the prior's time t0 = {self._t}.")

    def _next_time(self, t) -> float:
        if t is None:
            if self._count == 0:
                t = self._t
            elif self.model.dt is None:
                raise ValueError("`t` is required: the model has no `dt` to step by.")
            else:
                t = self._t + float(self.model.dt)
        else:
            t = float(np.asarray(t))
        self._check_after(t)
        return t

    def _check_y(self, y):
        y = np.asarray(as_float_array(y, "y"), np.float64)
        if y.ndim == 0:
            y = y[None]
        if y.shape != (self._obs_dim,):
            raise ValueError(f"`y` must have shape ({self._obs_dim},) (the model's sensor), got {y.shape}.")
        if np.any(np.isinf(y)):
            raise ValueError(f"`y` has infinite entries {y}; mark missing measurements with NaN.")
        return jnp.asarray(y, self._dtype)

    def _check_u(self, u):
        if u is None:
            return self._state.u
        u = jnp.asarray(as_float_array(u, "u"), self._dtype)
        if u.ndim == 0:
            u = u[None]
        m = self.model.control_dim
        if u.shape != (m,):
            raise ValueError(f"`u` must have shape ({m},) (model.control_dim), got {tuple(u.shape)}.")
        if not np.all(np.isfinite(np.asarray(u))):
            raise ValueError(f"`u` must be finite, got {np.asarray(u)}.")
        return u

    def _commit(self, state, t: float, count: int, record) -> None:
        self._state = state
        self._t = t
        self._count += count
        if self._keep_history:
            self._chunks.append(record)


__all__ = ["FilterFamily", "Forecast", "OnlineHistory", "OnlineTwin", "filter_names", "register_filter"]
