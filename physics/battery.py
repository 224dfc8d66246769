r"""Thevenin equivalent-circuit battery with a lumped thermal model (PyBaMM's ``equivalent_circuit.Thevenin``).

The cell is an open-circuit-voltage source in series with a resistor ``R0`` and ``n`` parallel RC pairs, coupled to a
lumped thermal model (cell only, or cell + jig as in PyBaMM). The equations reproduce PyBaMM's ``Thevenin`` model
(submodels ``OCVElement``, ``ResistorElement``, ``RCElement``, ``ThermalSubModel``, ``VoltageModel``; no diffusion
element) term by term; see :class:`TheveninBattery` for the mapping.
"""

import functools
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

import twinjax as tj
from twinjax.model.dynamics import AbstractDynamics

from .lookup import Lookup, Parameter, as_parameter, evaluate_parameter

_DATA = Path(__file__).parent / "data"
KELVIN = 273.15
"""0 °C in kelvin (PyBaMM's conversion constant)."""


class TheveninBattery(AbstractDynamics):
    r"""Thevenin equivalent-circuit model: OCV + series resistor ``R0`` + ``n`` RC pairs, with lumped thermal model.

    State ``x = [soc, v_1, ..., v_n, T_cell_K]`` (plus ``T_jig_K`` when the jig is modelled), control
    ``u = [I]`` or ``u = [I, T_amb_K]`` with the current ``I`` in A, **positive on discharge** (PyBaMM's convention).
    With a one-element control the ambient temperature is the field ``ambient_temperature_K``; a second element
    overrides it (a time-varying ambient, as PyBaMM's ``"Ambient temperature [K]"`` function of time).

    $$
    \begin{aligned}
    \frac{d\,\mathrm{soc}}{dt} &= -\frac{I}{3600\,Q}, \qquad
    \frac{dv_i}{dt} = -\frac{v_i}{R_i C_i} + \frac{I}{C_i}, \\
    V &= U_{\mathrm{ocv}}(\mathrm{soc}) - R_0 I - \sum_i v_i, \\
    \dot Q_{\mathrm{irr}} &= I^2 R_0 + I \sum_i v_i, \qquad
    \dot Q_{\mathrm{rev}} = -I\, T_{\mathrm{cell}}\,
        \frac{\partial U}{\partial T}(U_{\mathrm{ocv}}, T_{\mathrm{cell}}), \\
    C_{\mathrm{cell}} \frac{dT_{\mathrm{cell}}}{dt} &= \dot Q_{\mathrm{irr}} + \dot Q_{\mathrm{rev}}
        - k_{\mathrm{cell}} (T_{\mathrm{cell}} - T_{\mathrm{sur}}), \\
    C_{\mathrm{jig}} \frac{dT_{\mathrm{jig}}}{dt} &= k_{\mathrm{cell}} (T_{\mathrm{cell}} - T_{\mathrm{jig}})
        - k_{\mathrm{jig}} (T_{\mathrm{jig}} - T_{\mathrm{amb}}),
    \end{aligned}
    $$

    where the cell's surroundings ``T_sur`` are the jig when one is modelled (``jig_heat_capacity_J_K`` given) and the
    ambient air otherwise. Each of ``R0``, ``R_i``, ``C_i`` and ``∂U/∂T`` is a constant or a :class:`~physics.Lookup`
    evaluated at ``(soc, T_cell, I)`` (``∂U/∂T`` also at the OCV), so it may depend on state of charge, temperature and
    current. The RC heat ``I v_i`` is PyBaMM's choice (Nieto et al. 2012, eq. 1); it equals the resistor's
    dissipation ``v_i^2 / R_i`` in steady state and differs from it by the capacitor's stored power
    ``C_i v_i dv_i/dt`` in transients.

    Sign convention and mapping to PyBaMM (``pybamm.equivalent_circuit.Thevenin``, ``pybamm.EcmParameters``):

    | twinjax | PyBaMM |
    |---|---|
    | ``x[0]`` soc | ``"SoC"`` |
    | ``x[i]`` = ``v_i`` (V, positive on discharge) | ``-"Element-i overpotential [V]"`` |
    | ``x[n+1]`` ``T_cell`` (K) | ``"Cell temperature [degC]"`` + 273.15 |
    | ``x[n+2]`` ``T_jig`` (K) | ``"Jig temperature [degC]"`` + 273.15 |
    | ``u[0]`` (A) | ``"Current function [A]"`` |
    | ``capacity_Ah`` | ``"Cell capacity [A.h]"`` |
    | ``ocv_V`` | ``"Open-circuit voltage [V]"`` |
    | ``r0_ohm``, ``r_rc_ohm[i-1]``, ``c_rc_F[i-1]`` | ``"R0 [Ohm]"``, ``"Ri [Ohm]"``, ``"Ci [F]"`` |
    | ``entropic_V_K`` | ``"Entropic change [V/K]"`` |
    | ``cell_heat_capacity_J_K`` | ``"Cell thermal mass [J/K]"`` |
    | ``cell_heat_transfer_W_K`` | ``"Cell-jig heat transfer coefficient [W/K]"`` |
    | ``jig_heat_capacity_J_K`` | ``"Jig thermal mass [J/K]"`` |
    | ``jig_heat_transfer_W_K`` | ``"Jig-air heat transfer coefficient [W/K]"`` |
    | ``ambient_temperature_K`` | ``"Ambient temperature [K]"`` |
    | ``voltage_min_V``, ``voltage_max_V`` | ``"Lower voltage cut-off [V]"``, ``"Upper voltage cut-off [V]"`` |

    PyBaMM evaluates its look-up tables at the cell temperature in °C; :class:`~physics.Lookup` grids here are in K
    (converted when the tables are loaded), so the values agree. Differences from PyBaMM: the model does not stop at the
    voltage cut-offs or at soc = 0 or 1 (PyBaMM's termination events) — tables are extrapolated linearly beyond their
    grids instead, as PyBaMM does before an event fires; only the current-driven operating mode is provided (PyBaMM's
    voltage/power/CCCV modes become control policies on ``u``), and the optional diffusion element is not included.

    Arguments:
        capacity_Ah: cell capacity ``Q`` (A h).
        ocv_V: open-circuit voltage ``U_ocv(soc)`` (V), a :class:`~physics.Lookup` over ``soc``.
        r0_ohm: series resistance ``R0`` (Ω), constant or :class:`~physics.Lookup`.
        r_rc_ohm: resistances ``R_i`` (Ω) of the RC pairs, one per pair; the number of pairs ``n`` is its length.
        c_rc_F: capacitances ``C_i`` (F) of the RC pairs, same length as ``r_rc_ohm``.
        cell_heat_capacity_J_K: cell thermal mass ``C_cell`` (J/K).
        cell_heat_transfer_W_K: heat-transfer coefficient ``k_cell`` (W/K) from the cell to the jig, or to the ambient
            air when there is no jig.
        entropic_V_K: entropic coefficient ``∂U/∂T`` (V/K); a :class:`~physics.Lookup` may use the ``ocv_V`` axis.
        jig_heat_capacity_J_K: jig thermal mass ``C_jig`` (J/K), or ``None`` for no jig (single thermal state).
        jig_heat_transfer_W_K: heat-transfer coefficient ``k_jig`` (W/K) from jig to air; required with a jig.
        ambient_temperature_K: ambient temperature ``T_amb`` (K) used when ``u`` has one element.
        voltage_min_V, voltage_max_V: operating voltage limits (V), for constraints and checks; not enforced.

    Example:
        ```python
        cell = cell_5Ah()
        x0 = cell.initial_state(soc=0.9)
        u = jnp.array([5.0])  # 1C discharge
        cell.vector_field(0.0, x0, u), cell.terminal_voltage(0.0, x0, u)
        ```

    References:
        PyBaMM ``pybamm/models/full_battery_models/equivalent_circuit/thevenin.py`` and
        ``pybamm/models/submodels/equivalent_circuit_elements/`` (Sulzer et al., J. Open Res. Softw. 9(1), 2021).
        E. Barletta et al., "Thevenin's battery model parameter estimation based on simulink", Energies 15, 2022.
        N. Nieto et al., "Thermal modeling of large format lithium-ion cells", J. Electrochem. Soc. 160(2), 2013.
        G. L. Plett, *Battery Management Systems, Vol. I: Battery Modeling*, Artech House, 2015, ch. 2.
    """

    capacity_Ah: Float[Array, ""]
    ocv_V: Lookup
    r0_ohm: Parameter
    r_rc_ohm: tuple[Parameter, ...]
    c_rc_F: tuple[Parameter, ...]
    entropic_V_K: Parameter
    cell_heat_capacity_J_K: Float[Array, ""]
    cell_heat_transfer_W_K: Float[Array, ""]
    jig_heat_capacity_J_K: Float[Array, ""] | None
    jig_heat_transfer_W_K: Float[Array, ""] | None
    ambient_temperature_K: Float[Array, ""]
    voltage_min_V: Float[Array, ""]
    voltage_max_V: Float[Array, ""]

    def __init__(
        self,
        capacity_Ah: Float[ArrayLike, ""],
        ocv_V: Lookup,
        r0_ohm: Parameter,
        r_rc_ohm: tuple[Parameter, ...] | list[Parameter],
        c_rc_F: tuple[Parameter, ...] | list[Parameter],
        cell_heat_capacity_J_K: Float[ArrayLike, ""],
        cell_heat_transfer_W_K: Float[ArrayLike, ""],
        *,
        entropic_V_K: Parameter = 0.0,
        jig_heat_capacity_J_K: Float[ArrayLike, ""] | None = None,
        jig_heat_transfer_W_K: Float[ArrayLike, ""] | None = None,
        ambient_temperature_K: Float[ArrayLike, ""] = 298.15,
        voltage_min_V: Float[ArrayLike, ""] = 3.0,
        voltage_max_V: Float[ArrayLike, ""] = 4.2,
    ):
        if not isinstance(ocv_V, Lookup) or ocv_V.inputs != ("soc",):
            raise ValueError(f"`ocv_V` must be a Lookup over soc only; got {ocv_V!r}.")
        if len(r_rc_ohm) != len(c_rc_F):
            raise ValueError(
                f"`r_rc_ohm` and `c_rc_F` must have one entry per RC pair; got {len(r_rc_ohm)} and {len(c_rc_F)}."
            )
        if (jig_heat_capacity_J_K is None) != (jig_heat_transfer_W_K is None):
            raise ValueError(
                "`jig_heat_capacity_J_K` and `jig_heat_transfer_W_K` must be given together (a jig) or both be None; "
                f"got {jig_heat_capacity_J_K!r} and {jig_heat_transfer_W_K!r}."
            )
        self.capacity_Ah = as_parameter(capacity_Ah)
        self.ocv_V = ocv_V
        self.r0_ohm = as_parameter(r0_ohm)
        self.r_rc_ohm = tuple(as_parameter(r) for r in r_rc_ohm)
        self.c_rc_F = tuple(as_parameter(c) for c in c_rc_F)
        self.entropic_V_K = as_parameter(entropic_V_K)
        self.cell_heat_capacity_J_K = as_parameter(cell_heat_capacity_J_K)
        self.cell_heat_transfer_W_K = as_parameter(cell_heat_transfer_W_K)
        self.jig_heat_capacity_J_K = as_parameter(jig_heat_capacity_J_K)
        self.jig_heat_transfer_W_K = as_parameter(jig_heat_transfer_W_K)
        self.ambient_temperature_K = as_parameter(ambient_temperature_K)
        self.voltage_min_V = as_parameter(voltage_min_V)
        self.voltage_max_V = as_parameter(voltage_max_V)

    # --- layout -------------------------------------------------------------------------------------------------------

    @property
    def n_rc(self) -> int:
        """Number of RC pairs ``n`` (static: the length of ``r_rc_ohm``)."""
        return len(self.r_rc_ohm)

    @property
    def has_jig(self) -> bool:
        """Whether the thermal model has a jig (a second thermal state)."""
        return self.jig_heat_capacity_J_K is not None

    @property
    def state_names(self) -> tuple[str, ...]:
        """Names of the state components, in order."""
        names = ("soc", *(f"v_rc{i + 1}_V" for i in range(self.n_rc)), "T_cell_K")
        return (*names, "T_jig_K") if self.has_jig else names

    @property
    def state_dim(self) -> int:
        """Length of the state vector: ``n + 2``, or ``n + 3`` with a jig."""
        return self.n_rc + (3 if self.has_jig else 2)

    def initial_state(
        self, soc: Float[ArrayLike, ""] = 0.5, temperature_K: Float[ArrayLike, ""] | None = None
    ) -> Float[Array, " state"]:
        """Rest state: given ``soc``, relaxed RC pairs (``v_i = 0``), cell (and jig) at ``temperature_K`` (default:
        the ambient temperature). PyBaMM's initial conditions with ``"Element-i initial overpotential [V]" = 0``."""
        temp = self.ambient_temperature_K if temperature_K is None else jnp.asarray(temperature_K)
        soc = jnp.asarray(soc)
        dtype = jnp.result_type(soc, temp, float)
        parts = [soc[None], jnp.zeros(self.n_rc, dtype), temp[None]]
        if self.has_jig:
            parts.append(temp[None])
        return jnp.concatenate([p.astype(dtype) for p in parts])

    def _unpack(self, x, u):
        if x.shape != (self.state_dim,):
            raise ValueError(f"Battery state must have shape ({self.state_dim},) = {self.state_names}; got {x.shape}.")
        if u.shape not in ((1,), (2,)):
            raise ValueError(f"Battery control must be [current_A] or [current_A, T_amb_K]; got shape {u.shape}.")
        soc, v, temp = x[0], x[1 : 1 + self.n_rc], x[1 + self.n_rc]
        current = u[0]
        ambient = u[1] if u.shape[0] == 2 else self.ambient_temperature_K
        return soc, v, temp, current, ambient

    # --- physics ------------------------------------------------------------------------------------------------------

    def open_circuit_voltage(self, soc: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """``U_ocv(soc)`` (V)."""
        return self.ocv_V(soc, jnp.nan, jnp.nan)

    def _rc(self, soc, temp, current):
        r = [evaluate_parameter(p, soc, temp, current) for p in self.r_rc_ohm]
        c = [evaluate_parameter(p, soc, temp, current) for p in self.c_rc_F]
        return r, c

    def heat_sources_W(self, t: Float[ArrayLike, ""], x: Float[Array, " state"], u: Float[Array, " control"]):
        """``(Q_irr, Q_rev)`` (W): irreversible (Joule + RC) and reversible (entropic) heat generated in the cell."""
        soc, v, temp, current, _ = self._unpack(x, u)
        r0 = evaluate_parameter(self.r0_ohm, soc, temp, current)
        ocv = self.open_circuit_voltage(soc)
        dudt = evaluate_parameter(self.entropic_V_K, soc, temp, current, ocv)
        q_irr = current**2 * r0 + current * jnp.sum(v)
        q_rev = -current * temp * dudt
        return q_irr, q_rev

    def vector_field(
        self, t: Float[ArrayLike, ""], x: Float[Array, " state"], u: Float[Array, " control"]
    ) -> Float[Array, " state"]:
        """``dx/dt`` for state ``[soc, v_1..v_n, T_cell_K(, T_jig_K)]`` and control ``[I_A(, T_amb_K)]``."""
        soc, v, temp, current, ambient = self._unpack(x, u)
        dsoc = -current / (3600.0 * self.capacity_Ah)
        r, c = self._rc(soc, temp, current)
        dv = [-v[i] / (r[i] * c[i]) + current / c[i] for i in range(self.n_rc)]
        q_irr, q_rev = self.heat_sources_W(t, x, u)
        if self.has_jig:
            jig = x[2 + self.n_rc]
            q_cell_jig = self.cell_heat_transfer_W_K * (temp - jig)
            q_jig_air = self.jig_heat_transfer_W_K * (jig - ambient)
            dtemp = (q_irr + q_rev - q_cell_jig) / self.cell_heat_capacity_J_K
            djig = (q_cell_jig - q_jig_air) / self.jig_heat_capacity_J_K
            rates = [dsoc, *dv, dtemp, djig]
        else:
            dtemp = (q_irr + q_rev - self.cell_heat_transfer_W_K * (temp - ambient)) / self.cell_heat_capacity_J_K
            rates = [dsoc, *dv, dtemp]
        return jnp.stack([jnp.asarray(r_, dtype=x.dtype) for r_ in rates])

    def terminal_voltage(
        self, t: Float[ArrayLike, ""], x: Float[Array, " state"], u: Float[Array, " control"]
    ) -> Float[Array, ""]:
        """Terminal voltage ``V = U_ocv(soc) - R0 I - Σ v_i`` (V)."""
        soc, v, temp, current, _ = self._unpack(x, u)
        r0 = evaluate_parameter(self.r0_ohm, soc, temp, current)
        return self.open_circuit_voltage(soc) - r0 * current - jnp.sum(v)

    def observe(
        self, t: Float[ArrayLike, ""], x: Float[Array, " state"], u: Float[Array, " control"]
    ) -> Float[Array, "2"]:
        """Measured outputs ``[V, T_cell_K]``: terminal voltage (V) and cell temperature (K)."""
        v = self.terminal_voltage(t, x, u)
        return jnp.stack([v, x[1 + self.n_rc].astype(v.dtype)])


# --- parameter sets ---------------------------------------------------------------------------------------------------

# Full-cell OCV of the LG M50 (INR21700 M50, NMC811 | graphite-SiOx, 5 Ah) built from Chen et al. (2020)'s electrode
# open-circuit potentials: U_p(y) - U_n(x) with PyBaMM's ``Chen2020`` stoichiometry limits (ElectrodeSOHSolver), the
# window restricted to 3.0–4.2 V (soc = 0 at 3.0 V; the window holds 4.98 Ah of the 5.15 Ah between 2.5 and 4.2 V).
_CELL_5AH_SOC = tuple(i / 20 for i in range(21))
_CELL_5AH_OCV = (
    3.0000, 3.2331, 3.3923, 3.4672, 3.5070, 3.5544, 3.6051, 3.6461, 3.6817, 3.7212, 3.7670,
    3.8115, 3.8518, 3.9041, 3.9575, 4.0021, 4.0482, 4.0835, 4.0974, 4.1253, 4.2000,
)  # fmt: skip


def cell_5Ah(n_rc: int = 1, *, ambient_temperature_K: float = 298.15) -> TheveninBattery:
    """A realistic 5 Ah cylindrical NMC | graphite cell (21700 class, LG M50-like), single thermal node, no jig.

    | parameter | value | source / assumption |
    |---|---|---|
    | capacity | 5.0 A h | LG M50 nominal; Chen et al. (2020) |
    | OCV | 3.0–4.2 V, 21-point PCHIP table | Chen et al. (2020) electrode OCPs (see ``_CELL_5AH_OCV``) |
    | ``R0`` | 15 mΩ | typical 1 kHz / 10 ms pulse resistance of 21700 cells at 25 °C, 50 % SoC |
    | ``R1``, ``C1`` | 10 mΩ, 3 kF (τ₁ = 30 s) | charge-transfer/short diffusion arc, τ in the 10–60 s range |
    | ``R2``, ``C2`` (``n_rc=2``) | 8 mΩ, 75 kF (τ₂ = 600 s) | slow diffusion pair |
    | ``∂U/∂T`` | 0 | entropic heat neglected (≲ 10 % of Joule heat above C/2) |
    | ``C_cell`` | 70 J/K | 68 g × ≈1.0 J/(g K) specific heat |
    | ``k_cell`` | 0.25 W/K | forced air, h ≈ 47 W/(m² K) over the 5.3e-3 m² can surface |
    | limits | 2.5 V … 4.2 V | manufacturer cut-offs (the OCV window starts at 3.0 V) |

    These are assumed values for demonstrations and tests, not a fit to a particular cell's data.

    Arguments:
        n_rc: number of RC pairs, 1 or 2.
        ambient_temperature_K: ambient temperature (K).

    Returns:
        A :class:`TheveninBattery` with state ``[soc, v_1, (v_2,) T_cell_K]``.

    References:
        C.-H. Chen et al., "Development of experimental techniques for parameterization of multi-scale lithium-ion
        battery models", J. Electrochem. Soc. 167, 080534, 2020.
    """
    pairs = {1: ((0.010,), (3000.0,)), 2: ((0.010, 0.008), (3000.0, 75000.0))}
    if n_rc not in pairs:
        raise ValueError(f"cell_5Ah has parameters for n_rc = 1 or 2; got n_rc={n_rc!r}.")
    r_rc, c_rc = pairs[n_rc]
    return TheveninBattery(
        capacity_Ah=5.0,
        ocv_V=Lookup(np.array(_CELL_5AH_OCV), soc=np.array(_CELL_5AH_SOC), method="pchip"),
        r0_ohm=0.015,
        r_rc_ohm=r_rc,
        c_rc_F=c_rc,
        cell_heat_capacity_J_K=70.0,
        cell_heat_transfer_W_K=0.25,
        ambient_temperature_K=ambient_temperature_K,
        voltage_min_V=2.5,
        voltage_max_V=4.2,
    )


def _read_table(name: str) -> np.ndarray:
    lines = (_DATA / name).read_text().splitlines()
    rows = [ln for ln in lines if ln and not ln.startswith("#") and not ln[0].isalpha()]
    return np.array([[float(v) for v in row.split(",")] for row in rows])


@functools.cache
def _pybamm_tables():
    ocv = _read_table("ecm_example_ocv.csv")
    rc = _read_table("ecm_example_rc.csv")
    dudt = _read_table("ecm_example_dudt.csv")
    temp_C, current, soc = (np.unique(rc[:, k]) for k in range(3))
    shape = (len(temp_C), len(current), len(soc))
    rc_values = [rc[:, k].reshape(shape, order="C") for k in (3, 4, 5)]
    dudt_ocv, dudt_temp_C = np.unique(dudt[:, 0]), np.unique(dudt[:, 1])
    dudt_values = dudt[:, 2].reshape(len(dudt_ocv), len(dudt_temp_C), order="C")
    return ocv, (temp_C, current, soc, rc_values), (dudt_ocv, dudt_temp_C, dudt_values)


def pybamm_ecm_example(*, ambient_temperature_K: float = 298.15) -> TheveninBattery:
    """PyBaMM's ``ECM_Example`` parameter set: a 100 A h demonstration cell with one RC pair, cell + jig thermal model.

    Values as in PyBaMM's ``pybamm/input/parameters/ecm/example_set.py`` (tables copied to ``physics/data/``, BSD-3
    licence): capacity 100 A h; voltage cut-offs 3.2 and 4.2 V; cell thermal mass 1000 J/K; jig thermal mass 500 J/K;
    cell–jig and jig–air heat-transfer coefficients 10 W/K; ambient 25 °C. ``R0``, ``R1``, ``C1`` are 3-D tables over
    temperature (-20…50 °C), current (-400…700 A) and SoC (0…1), generated by PyBaMM's authors from a 1 mΩ DC resistance
    at 25 °C / 50 % SoC / 100 A with a quadratic SoC, Arrhenius (Ea = 20 kJ/mol) temperature and linear current
    dependence, split ``R0`` = 40 %, ``R1`` = 60 %, and ``C1 = τ / R1`` with τ = 30 s. The OCV (SoC -0.05…1.04) and the
    entropic change ``∂U/∂T`` (over OCV 3.1…4.3 V and -20…40 °C) are tables from an undisclosed literature source.
    All tables are interpolated linearly and extrapolated linearly, like PyBaMM's default ``Interpolant``.
    PyBaMM's ``"RCR lookup limit [A]"`` (340 A) is not used by its Thevenin model and is omitted here. PyBaMM's initial
    conditions (SoC 0.5, 25 °C, zero overpotential) are ``initial_state(0.5)``.

    Returns:
        A :class:`TheveninBattery` with state ``[soc, v_1, T_cell_K, T_jig_K]``.

    References:
        PyBaMM ``ECM_Example`` (https://github.com/pybamm-team/PyBaMM), BSD-3-Clause.
    """
    ocv, (temp_C, current, soc, (r0, r1, c1)), (dudt_ocv, dudt_temp_C, dudt) = _pybamm_tables()
    grid = dict(temperature_K=temp_C + KELVIN, current_A=current, soc=soc)
    return TheveninBattery(
        capacity_Ah=100.0,
        ocv_V=Lookup(ocv[:, 1], soc=ocv[:, 0]),
        r0_ohm=Lookup(r0, **grid),
        r_rc_ohm=(Lookup(r1, **grid),),
        c_rc_F=(Lookup(c1, **grid),),
        entropic_V_K=Lookup(dudt, ocv_V=dudt_ocv, temperature_K=dudt_temp_C + KELVIN),
        cell_heat_capacity_J_K=1000.0,
        cell_heat_transfer_W_K=10.0,
        jig_heat_capacity_J_K=500.0,
        jig_heat_transfer_W_K=10.0,
        ambient_temperature_K=ambient_temperature_K,
        voltage_min_V=3.2,
        voltage_max_V=4.2,
    )


def battery_twin(
    battery: TheveninBattery | None = None,
    *,
    dt: float = 1.0,
    soc0: float = 0.8,
    soc0_sd: float = 0.05,
    voltage_sd_V: float = 0.005,
    temperature_sd_K: float = 0.5,
) -> tj.StateSpaceModel:
    """A battery twin: terminal voltage and cell temperature measured every ``dt`` (s), current input ``u = [I]``.

    Sensor ``y = [V, T_cell_K] + v``, ``v ~ N(0, diag(voltage_sd_V², temperature_sd_K²))``
    (:meth:`TheveninBattery.observe`).
    Initial belief: ``soc ~ N(soc0, soc0_sd²)``, RC voltages ``N(0, (1 mV)²)``, temperatures ``N(T_amb, (0.5 K)²)``.
    Default battery: :func:`cell_5Ah` ``()``.

    The sensor function is the method ``battery.observe``; ``tj.StateSpaceModel`` binds it to the twin's current
    dynamics, so a parameter edited on ``twin.dynamics`` (``eqx.tree_at``, a ``tj.Params`` draw, an optimiser step)
    is seen by the sensor too.
    """
    battery = cell_5Ah() if battery is None else battery
    mean = battery.initial_state(soc0)
    n = battery.n_rc
    variances = jnp.concatenate(
        [jnp.array([soc0_sd**2]), jnp.full((n,), 1e-3**2), jnp.full((battery.state_dim - n - 1,), 0.5**2)]
    )
    return tj.StateSpaceModel(
        battery,
        tj.GaussianObservation(battery.observe, jnp.diag(jnp.array([voltage_sd_V**2, temperature_sd_K**2]))),
        tj.Gaussian(mean, jnp.diag(variances)),
        dt,
        control_dim=1,
    )
