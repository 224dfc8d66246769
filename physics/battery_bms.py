r"""The battery-management case study's pieces: a faulty plant, the estimator's augmented twin, a drive cycle.

**Plant** (:class:`Plant`, :func:`plant_tick`). The true cell is a :class:`~physics.battery.TheveninBattery` (one RC
pair, one thermal node) whose parameters the twin does not know; it is integrated by classical RK4 over the tick
``dt`` (1 s) with the current held. Sensors (:func:`sense`): terminal voltage, cell temperature and current, each with
Gaussian noise, and a constant current-sensor bias ``b``: ``I_meas = I + b + ε_I``. Faults (:class:`Faults`, times in
s, all arrays so a sweep can vary them):

- *capacity fade*: ``Q → f_Q Q`` from ``capacity_at_s`` on (a step; the state of charge stays continuous);
- *resistance growth*: ``R0 → (1 + (f_R - 1) r(t)) R0``, ``r`` a linear ramp from 0 to 1 over
  ``[resistance_at_s, resistance_at_s + resistance_ramp_s]``;
- *loose connection*: a contact resistance ``R_c`` in the sensed current path, intermittently: bursts of ``burst_s``
  switched on at random (probability ``duty``) inside ``[loose_from_s, loose_to_s)``; the sensed voltage becomes
  ``V - R_c I``;
- *temperature-sensor fault*: the reading sticks at its value at ``tsensor_at_s`` (stuck-at fault).

**Twin** (:class:`AugmentedBattery`). The estimator's discrete-time model on the augmented state
``z = [soc, v_1, T, R0, 1/Q, b, c, R1, C1, m]``: one RK4 step of the nominal cell with ``R0``, ``Q``, the cooling
coefficient ``c k_cell``, the RC pair ``R1``, ``C1`` and the thermal mass ``m C_cell`` taken from the state and the
current ``I_meas - b``, the parameters random walks. Its sensor (:func:`twin_sensor`) is ``[V, T]``.

**Drive** (:func:`drive_current`). A drive-cycle-like discharge profile: a 120 s urban micro-trip (accelerate at 2.5C,
cruise at 1C, regenerate at -1.5C, idle, accelerate at 2C, cruise at 1.2C, regenerate at -0.8C; mean ≈ 0.78C,
RMS ≈ 1.3C), each trip scaled by a random factor in ``[0.8, 1.2]``. It stands in for a scaled urban dynamometer
schedule (UDDS-like stop-and-go); the profile is synthetic, documented here, and reproducible from its key.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

from twinjax.model.dynamics import AbstractDiscreteDynamics

from .battery import TheveninBattery
from .battery_charging import rk4_step

# one 120 s micro-trip: (duration s, C-rate; positive = discharge)
MICRO_TRIP = ((10, 2.5), (50, 1.0), (10, -1.5), (20, 0.0), (10, 2.0), (15, 1.2), (5, -0.8))
TRIP_S = sum(d for d, _ in MICRO_TRIP)


def drive_current(t: Float[ArrayLike, ""], scales: Float[Array, " trips"], capacity_Ah: float) -> Float[Array, ""]:
    """The drive profile's current (A, positive on discharge) at time ``t`` (s from the drive's start): the micro-trip
    :data:`MICRO_TRIP` repeated, trip ``j`` scaled by ``scales[j]`` (clipped to the last trip)."""
    edges = jnp.cumsum(jnp.array([0] + [d for d, _ in MICRO_TRIP]))
    rates = jnp.array([c for _, c in MICRO_TRIP])
    t = jnp.asarray(t)
    trip = jnp.clip(jnp.floor(t / TRIP_S).astype(jnp.int32), 0, scales.shape[0] - 1)
    phase = jnp.mod(t, TRIP_S)
    segment = jnp.clip(jnp.searchsorted(edges, phase, side="right") - 1, 0, len(MICRO_TRIP) - 1)
    return rates[segment] * scales[trip] * capacity_Ah


class Faults(eqx.Module):
    """The fault schedule (times in s from the start of the run; factors relative to the healthy plant)."""

    capacity_at_s: Float[Array, ""]
    capacity_factor: Float[Array, ""]
    resistance_at_s: Float[Array, ""]
    resistance_ramp_s: Float[Array, ""]
    resistance_factor: Float[Array, ""]
    loose_from_s: Float[Array, ""]
    loose_to_s: Float[Array, ""]
    loose_ohm: Float[Array, ""]
    loose_duty: Float[Array, ""]
    loose_burst_s: float = eqx.field(static=True)
    tsensor_at_s: Float[Array, ""]

    def __init__(
        self,
        capacity_at_s=7200.0,
        capacity_factor=0.9,
        resistance_at_s=6300.0,
        resistance_ramp_s=600.0,
        resistance_factor=1.4,
        loose_from_s=5700.0,
        loose_to_s=6300.0,
        loose_ohm=0.03,
        loose_duty=0.2,
        loose_burst_s=5.0,
        tsensor_at_s=10500.0,
    ):
        f = lambda v: jnp.asarray(v, float)  # noqa: E731
        self.capacity_at_s, self.capacity_factor = f(capacity_at_s), f(capacity_factor)
        self.resistance_at_s, self.resistance_ramp_s = f(resistance_at_s), f(resistance_ramp_s)
        self.resistance_factor = f(resistance_factor)
        self.loose_from_s, self.loose_to_s, self.loose_ohm = f(loose_from_s), f(loose_to_s), f(loose_ohm)
        self.loose_duty = f(loose_duty)
        self.loose_burst_s = float(loose_burst_s)
        self.tsensor_at_s = f(tsensor_at_s)

    def onsets(self) -> dict[str, Float[Array, ""]]:
        """Onset time (s) of each fault class."""
        return {
            "loose_connection": self.loose_from_s,
            "resistance_growth": self.resistance_at_s,
            "capacity_fade": self.capacity_at_s,
            "temperature_sensor": self.tsensor_at_s,
        }


FAULT_CLASSES = ("loose_connection", "resistance_growth", "capacity_fade", "temperature_sensor")


class Plant(eqx.Module):
    """The true plant: the healthy cell (hidden from the twin), sensor noise and bias, the fault schedule.

    Arguments:
        cell: the true healthy cell (one RC pair, no jig).
        current_bias_A: the current sensor's constant bias ``b`` (A).
        voltage_sd_V, temperature_sd_K, current_sd_A: sensor noise standard deviations.
        faults: the :class:`Faults` schedule.
        dt_s: the tick (s).
    """

    cell: TheveninBattery
    current_bias_A: Float[Array, ""]
    voltage_sd_V: Float[Array, ""]
    temperature_sd_K: Float[Array, ""]
    current_sd_A: Float[Array, ""]
    faults: Faults
    dt_s: float = eqx.field(static=True, default=1.0)

    def cell_at(self, t: Float[ArrayLike, ""]) -> TheveninBattery:
        """The true cell at time ``t``: resistance grown and capacity faded per the schedule."""
        f = self.faults
        ramp = jnp.clip((t - f.resistance_at_s) / f.resistance_ramp_s, 0.0, 1.0)
        r0 = self.cell.r0_ohm * (1.0 + (f.resistance_factor - 1.0) * ramp)
        q = self.cell.capacity_Ah * jnp.where(t >= f.capacity_at_s, f.capacity_factor, 1.0)
        return eqx.tree_at(lambda c: (c.r0_ohm, c.capacity_Ah), self.cell, (r0, q))

    def step(self, t: Float[ArrayLike, ""], x: Float[Array, "3"], current: Float[ArrayLike, ""]) -> Float[Array, "3"]:
        """The true state one tick later, the current held (A, positive on discharge)."""
        return rk4_step(self.cell_at(t), x, jnp.reshape(current, (1,)), self.dt_s)

    def voltage(self, t, x, current) -> Float[Array, ""]:
        """The cell's true terminal voltage (V) in state ``x`` carrying ``current``."""
        return self.cell_at(t).terminal_voltage(t, x, jnp.reshape(current, (1,)))

    def loose_on(self, t: Float[ArrayLike, ""], key: jax.Array) -> Bool[Array, ""]:
        """Whether the loose connection is open (a burst) at ``t``: burst ``⌊t / burst_s⌋`` is on with probability
        ``duty`` (a hash of ``key`` and the burst index), inside the fault window."""
        f = self.faults
        burst = jnp.floor(t / f.loose_burst_s).astype(jnp.uint32)
        on = jax.random.uniform(jax.random.fold_in(key, burst)) < f.loose_duty
        return on & (t >= f.loose_from_s) & (t < f.loose_to_s)


def sense(plant: Plant, t, x_next, current, stuck_T, key_noise, key_loose):
    """The sensor readings at the end of a tick: ``([V_meas, T_meas], I_meas, loose)``. ``stuck_T`` is the
    temperature reading frozen at the sensor fault's onset (used from ``tsensor_at_s`` on)."""
    kv, kt, ki = jax.random.split(key_noise, 3)
    loose = plant.loose_on(t, key_loose)
    volts = plant.voltage(t, x_next, current) - jnp.where(loose, plant.faults.loose_ohm, 0.0) * current
    temp = x_next[2] + plant.temperature_sd_K * jax.random.normal(kt, ())
    temp = jnp.where(t + plant.dt_s > plant.faults.tsensor_at_s, stuck_T, temp)
    y = jnp.stack([volts + plant.voltage_sd_V * jax.random.normal(kv, ()), temp])
    i_meas = current + plant.current_bias_A + plant.current_sd_A * jax.random.normal(ki, ())
    return y, i_meas, loose


class AugmentedBattery(AbstractDiscreteDynamics):
    """The estimator's twin on ``z = [soc, v_1, T_K, R0_ohm, 1/Q (1/(A h)), b_A, c, R1_ohm, C1_F, m]``, control
    ``u = [I_meas]``: one RK4 step of the nominal ``cell`` over ``dt_s`` with ``R0 = z[3]``, ``Q = 1/z[4]``, the
    heat-transfer coefficient ``z[6] k_cell`` and heat capacity ``z[9] C_cell`` (multipliers of the nominal values),
    ``R1 = z[7]``, ``C1 = z[8]`` and current ``I_meas - z[5]``; the parameters held (random walks through the process
    noise)."""

    cell: TheveninBattery
    dt_s: float = eqx.field(static=True, default=1.0)

    def with_parameters(self, z) -> TheveninBattery:
        """The nominal cell with ``R0``, capacity and cooling from the augmented state ``z``."""
        c = self.cell
        return eqx.tree_at(
            lambda c: (
                c.r0_ohm,
                c.capacity_Ah,
                c.cell_heat_transfer_W_K,
                c.r_rc_ohm,
                c.c_rc_F,
                c.cell_heat_capacity_J_K,
            ),
            c,
            (z[3], 1.0 / z[4], z[6] * c.cell_heat_transfer_W_K, (z[7],), (z[8],), z[9] * c.cell_heat_capacity_J_K),
        )

    def transition(self, t, z, u):
        cell = self.with_parameters(z)
        x1 = rk4_step(cell, z[:3], u[:1] - z[5], self.dt_s)
        return jnp.concatenate([x1, z[3:]])


def twin_sensor(dynamics: AugmentedBattery):
    """The twin's sensor ``h(t, z, u) = [V(z, I_meas - b), T]``."""

    def h(t, z, u):
        cell = dynamics.with_parameters(z)
        volts = cell.terminal_voltage(t, z[:3], u[:1] - z[5])
        return jnp.stack([volts, z[2]])

    return h
