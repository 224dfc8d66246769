r"""Building thermal model (2R2C) with synthetic weather and occupancy."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

import twinjax as tj
from twinjax.model.dynamics import AbstractDynamics

from ._utils import param

SECONDS_PER_DAY = 86400.0


class Building2R2C(AbstractDynamics):
    r"""Two-resistance, two-capacitance (2R2C) thermal network of a heated building zone.

    State ``x = [T_in_C, T_wall_C]``: indoor air (with furnishings) and building envelope temperatures (°C).
    Control ``u = [Q_heat_W, T_out_C, Q_occ_W]`` or ``u = [Q_heat_W, T_out_C, Q_occ_W, I_sol_W_m2]``: heating power
    (W), outdoor temperature (°C), internal gains of occupants and their equipment (W) and, optionally, global
    solar irradiance (W/m²; 0 when omitted). Use :func:`stack_inputs` to build ``u`` over time.

    $$
    \begin{aligned}
    C_{\mathrm{air}} \dot T_{\mathrm{in}} &= \frac{T_{\mathrm{wall}} - T_{\mathrm{in}}}{R_{\mathrm{in,wall}}}
        + \eta\, Q_{\mathrm{heat}} + f_{\mathrm{occ}}\, Q_{\mathrm{occ}} + A_{\mathrm{sol}}\, I_{\mathrm{sol}}, \\
    C_{\mathrm{wall}} \dot T_{\mathrm{wall}} &= \frac{T_{\mathrm{in}} - T_{\mathrm{wall}}}{R_{\mathrm{in,wall}}}
        + \frac{T_{\mathrm{out}} - T_{\mathrm{wall}}}{R_{\mathrm{wall,out}}}.
    \end{aligned}
    $$

    Under constant inputs the steady state is that of the series resistor network: with the total gain
    $Q = \eta Q_{\mathrm{heat}} + f_{\mathrm{occ}} Q_{\mathrm{occ}} + A_{\mathrm{sol}} I_{\mathrm{sol}}$,
    $T_{\mathrm{wall}} = T_{\mathrm{out}} + Q R_{\mathrm{wall,out}}$ and
    $T_{\mathrm{in}} = T_{\mathrm{out}} + Q (R_{\mathrm{in,wall}} + R_{\mathrm{wall,out}})$ (:meth:`steady_state`).

    Default values describe a small, moderately insulated house (overall UA = 200 W/K): ``R_in_wall`` = 1 mK/W
    (interior surface film and inner wall layer), ``R_wall_out`` = 4 mK/W, ``C_air`` = 2 MJ/K (≈ 360 m³ of air at
    1.2 kJ/(m³ K) plus furnishings, ×5), ``C_wall`` = 30 MJ/K (envelope thermal mass). Time constants:
    ``R_in_wall C_air`` ≈ 0.6 h (air) and ``(R_in_wall + R_wall_out) C_wall`` ≈ 42 h (envelope). They are assumed,
    order-of-magnitude values, not identified from data.

    Arguments:
        r_in_wall_K_W: thermal resistance ``R_in,wall`` between indoor air and envelope (K/W).
        r_wall_out_K_W: thermal resistance ``R_wall,out`` between envelope and outdoor air (K/W).
        c_air_J_K: heat capacity ``C_air`` of the indoor air node (J/K).
        c_wall_J_K: heat capacity ``C_wall`` of the envelope node (J/K).
        heating_efficiency: fraction ``η`` of the heating power delivered to the air. Default 1.
        occupancy_gain_factor: fraction ``f_occ`` of the occupancy gain delivered to the air. Default 1.
        solar_aperture_m2: effective solar aperture ``A_sol`` (m², window area × g-value). Default 2.

    Example:
        ```python
        house = Building2R2C()
        u = jnp.array([2000.0, 5.0, 300.0])  # 2 kW heating, 5 °C outside, 300 W occupants
        house.steady_state(u)  # [T_in_C, T_wall_C]
        ```

    References:
        P. Bacher and H. Madsen, "Identifying suitable models for the heat dynamics of buildings", Energy and
        Buildings 43(7), 2011 (grey-box RC models, model TiTe). ISO 13790:2008 (simplified hourly RC method).
    """

    r_in_wall_K_W: Float[ArrayLike, ""] = param(1.0e-3)
    r_wall_out_K_W: Float[ArrayLike, ""] = param(4.0e-3)
    c_air_J_K: Float[ArrayLike, ""] = param(2.0e6)
    c_wall_J_K: Float[ArrayLike, ""] = param(3.0e7)
    heating_efficiency: Float[ArrayLike, ""] = param(1.0)
    occupancy_gain_factor: Float[ArrayLike, ""] = param(1.0)
    solar_aperture_m2: Float[ArrayLike, ""] = param(2.0)

    def _gain_and_outdoor(self, u):
        if u.shape not in ((3,), (4,)):
            raise ValueError(
                "control must be [heating_W, T_out_C, occupancy_W] or [heating_W, T_out_C, occupancy_W, "
                f"solar_W_m2]; got shape {u.shape}."
            )
        solar = u[3] if u.shape[0] == 4 else jnp.zeros((), u.dtype)
        gain = self.heating_efficiency * u[0] + self.occupancy_gain_factor * u[2] + self.solar_aperture_m2 * solar
        return gain, u[1]

    def vector_field(
        self, t: Float[ArrayLike, ""], x: Float[Array, " 2"], u: Float[Array, " control"]
    ) -> Float[Array, " 2"]:
        """``[dT_in/dt, dT_wall/dt]`` (K/s)."""
        gain, t_out = self._gain_and_outdoor(u)
        t_in, t_wall = x[0], x[1]
        q_in_wall = (t_in - t_wall) / self.r_in_wall_K_W
        q_wall_out = (t_wall - t_out) / self.r_wall_out_K_W
        d_in = (gain - q_in_wall) / self.c_air_J_K
        d_wall = (q_in_wall - q_wall_out) / self.c_wall_J_K
        return jnp.stack([d_in, d_wall]).astype(x.dtype)

    def steady_state(self, u: Float[Array, " control"]) -> Float[Array, " 2"]:
        """``[T_in_C, T_wall_C]`` at equilibrium under the constant control ``u``."""
        gain, t_out = self._gain_and_outdoor(u)
        t_wall = t_out + gain * self.r_wall_out_K_W
        return jnp.stack([t_wall + gain * self.r_in_wall_K_W, t_wall])


def _ou_noise(key, ts_s, sd, timescale_s):
    """Stationary Ornstein–Uhlenbeck path on the (possibly irregular) grid ``ts_s``, by its exact AR(1) transition."""
    z = jax.random.normal(key, ts_s.shape, ts_s.dtype)
    decay = jnp.exp(-jnp.diff(ts_s) / timescale_s)

    def step(prev, inputs):
        a, zk = inputs
        nxt = a * prev + sd * jnp.sqrt(1.0 - a**2) * zk
        return nxt, nxt

    first = sd * z[0]
    _, rest = jax.lax.scan(step, first, (decay, z[1:]))
    return jnp.concatenate([first[None], rest])


def synthetic_weather(
    key: PRNGKeyArray,
    ts_s: Float[Array, " time"],
    *,
    mean_C: Float[ArrayLike, ""] = 5.0,
    amplitude_C: Float[ArrayLike, ""] = 4.0,
    peak_hour: Float[ArrayLike, ""] = 15.0,
    noise_sd_C: Float[ArrayLike, ""] = 1.5,
    noise_timescale_s: Float[ArrayLike, ""] = 6 * 3600.0,
) -> Float[Array, " time"]:
    r"""Synthetic outdoor temperature (°C): a daily cycle plus Ornstein–Uhlenbeck weather noise.

    $$ T_{\mathrm{out}}(t) = \bar T + a \cos\left(2\pi \frac{t - t_{\mathrm{peak}}}{86400\,\mathrm{s}}\right)
       + \varepsilon(t), \qquad d\varepsilon = -\frac{\varepsilon}{\tau} dt + \sigma \sqrt{2/\tau}\, dW, $$

    with ``ε`` started from its stationary law ``N(0, σ²)`` and sampled exactly on the grid
    (``ε_{k+1} = e^{-Δ/τ} ε_k + σ \sqrt{1 - e^{-2Δ/τ}} ξ_k``) by ``lax.scan``. Defaults: a winter day at a
    mid-latitude site (mean 5 °C, ±4 °C, warmest at 15:00) with synoptic fluctuations of 1.5 °C over ~6 h.

    Arguments:
        key: PRNG key; the same key gives the same series.
        ts_s: increasing sample times (s), ``t = 0`` at midnight.
        mean_C, amplitude_C: daily mean and half-range of the deterministic cycle (°C).
        peak_hour: hour of the day of the cycle's maximum (h).
        noise_sd_C: stationary standard deviation ``σ`` of the noise (°C).
        noise_timescale_s: correlation time ``τ`` of the noise (s).

    Returns:
        Outdoor temperature at ``ts_s``, shape ``(time,)``.

    Example:
        ```python
        ts = jnp.arange(0.0, 2 * 86400.0, 900.0)
        t_out = synthetic_weather(jax.random.key(0), ts)
        ```

    References:
        G. E. P. Box, G. M. Jenkins and G. C. Reinsel, *Time Series Analysis*, 4th ed., Wiley, 2008, §3.2 (AR(1)).
    """
    phase = 2 * jnp.pi * (ts_s - peak_hour * 3600.0) / SECONDS_PER_DAY
    return mean_C + amplitude_C * jnp.cos(phase) + _ou_noise(key, ts_s, noise_sd_C, noise_timescale_s)


def synthetic_occupancy(
    key: PRNGKeyArray,
    ts_s: Float[Array, " time"],
    *,
    peak_W: Float[ArrayLike, ""] = 1200.0,
    base_W: Float[ArrayLike, ""] = 100.0,
    start_hour: Float[ArrayLike, ""] = 8.0,
    end_hour: Float[ArrayLike, ""] = 18.0,
    first_weekday: int = 0,
    noise_sd: Float[ArrayLike, ""] = 0.2,
) -> Float[Array, " time"]:
    r"""Synthetic internal gains (W) of an office: weekday working-hours occupancy plus multiplicative noise.

    $$ Q_{\mathrm{occ}}(t) = b + p\, \mathbb 1[\text{weekday}(t)]\, \mathbb 1[h_0 \le \text{hour}(t) < h_1]
       \max(0, 1 + s\, \xi_t), \qquad \xi_t \sim N(0, 1) \text{ i.i.d.} $$

    Defaults: ~10 occupants at ≈ 120 W each (people and their equipment) from 08:00 to 18:00, Monday–Friday, with
    a 100 W base load (standby equipment).

    Arguments:
        key: PRNG key; the same key gives the same series.
        ts_s: sample times (s), ``t = 0`` at midnight at the start of day ``first_weekday``.
        peak_W: mean gain while occupied (W), on top of ``base_W``.
        base_W: constant base gain (W).
        start_hour, end_hour: occupied hours ``[h_0, h_1)`` (h).
        first_weekday: day of the week at ``t = 0`` (0 = Monday, …, 6 = Sunday); days 5 and 6 are unoccupied.
        noise_sd: relative standard deviation ``s`` of the occupied gain.

    Returns:
        Internal gains at ``ts_s``, shape ``(time,)``.

    Example:
        ```python
        gains = synthetic_occupancy(jax.random.key(1), jnp.arange(0.0, 7 * 86400.0, 3600.0))
        ```

    References:
        ISO 17772-1:2017 / EN 16798-1, annex (standard office occupancy schedules and internal gains).
    """
    day = jnp.floor(ts_s / SECONDS_PER_DAY) + first_weekday
    hour = (ts_s % SECONDS_PER_DAY) / 3600.0
    weekday = (day % 7) < 5
    occupied = weekday & (hour >= start_hour) & (hour < end_hour)
    factor = jnp.maximum(0.0, 1.0 + noise_sd * jax.random.normal(key, ts_s.shape, ts_s.dtype))
    return base_W + jnp.where(occupied, peak_W * factor, 0.0)


def stack_inputs(
    heating_W: Float[ArrayLike, "*time"],
    T_out_C: Float[ArrayLike, "*time"],
    occupancy_W: Float[ArrayLike, "*time"],
    solar_W_m2: Float[ArrayLike, "*time"] | None = None,
) -> Float[Array, "*time control"]:
    """Stack input series (or scalars, broadcast) into the :class:`Building2R2C` control array ``u``.

    Returns:
        ``u`` of shape ``(time, 3)`` ``[heating_W, T_out_C, occupancy_W]``, or ``(time, 4)`` with ``solar_W_m2``.

    Example:
        ```python
        us = stack_inputs(0.0, synthetic_weather(k1, ts), synthetic_occupancy(k2, ts))
        ```
    """
    columns = [heating_W, T_out_C, occupancy_W] + ([] if solar_W_m2 is None else [solar_W_m2])
    columns = jnp.broadcast_arrays(*[jnp.asarray(c) for c in columns])
    return jnp.stack(columns, axis=-1)


def _indoor(t: Float[ArrayLike, ""], x: Float[Array, " 2"], u: Float[Array, " control"]) -> Float[Array, " 1"]:
    return x[:1]


def building_twin(
    building: Building2R2C | None = None, *, dt: float = 900.0, temperature_sd_C: float = 0.2
) -> tj.StateSpaceModel:
    """A building twin: indoor temperature measured every ``dt`` (s, default 15 min); ``u = [Q_heat_W, T_out_C,
    Q_occ_W]`` (see :func:`stack_inputs`). Initial belief ``N([20, 15], diag(1, 4))`` (°C)."""
    return tj.StateSpaceModel(
        Building2R2C() if building is None else building,
        tj.GaussianObservation(_indoor, jnp.array([[temperature_sd_C**2]])),
        tj.Gaussian(jnp.array([20.0, 15.0]), jnp.diag(jnp.array([1.0, 4.0]))),
        dt,
        control_dim=3,
    )
