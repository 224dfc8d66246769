r"""Pharmacokinetic / pharmacodynamic (PK/PD) patient model: two compartments, first-order absorption, an effect
compartment and a sigmoid Emax effect, with a covariate model and log-normal between-subject variability.

**PK.** An oral dose enters a depot and is absorbed at rate ``k_a``; the drug distributes between a central
(volume ``V_1``) and a peripheral (volume ``V_2``) compartment with inter-compartmental clearance ``Q`` and is
eliminated from the central one with clearance ``CL``. In amounts (mg), with ``C = A_c / V_1``:

$$
\begin{aligned}
\dot A_d &= -k_a A_d, \\
\dot A_c &= k_a A_d - \tfrac{CL}{V_1} A_c - \tfrac{Q}{V_1} A_c + \tfrac{Q}{V_2} A_p + R(t), \\
\dot A_p &= \tfrac{Q}{V_1} A_c - \tfrac{Q}{V_2} A_p, \\
\dot A_e &= \tfrac{CL}{V_1} A_c, \\
\dot C_e &= k_{e0} (A_c / V_1 - C_e),
\end{aligned}
$$

where ``R`` is an optional zero-order infusion into the central compartment (mg/h) and ``A_e`` the cumulative amount
eliminated, so ``A_d + A_c + A_p + A_e`` equals the dose given (mass balance), and ``∫ C dt = ΔA_e / CL`` (AUC).

**PD.** The effect follows the effect-site concentration ``C_e`` through the sigmoid Emax (Hill) model
``E = E_0 + E_max C_e^h / (EC_{50}^h + C_e^h)``; at ``C_e = EC_{50}`` it is ``E_0 + E_max / 2``.

**Covariates.** :func:`covariate_model` gives the typical (population) parameters of a patient of weight ``WT``
(kg), age (years) and creatinine clearance ``CrCL`` (mL/min): allometric scaling ``CL, Q ∝ (WT/70)^{0.75}``,
``V_1, V_2 ∝ WT/70``; a renal fraction of clearance ``CL = CL_{pop} (WT/70)^{0.75} (f_{nr} + (1 − f_{nr}) CrCL/100)
(age/40)^{θ_{age}}``; a larger peripheral volume with age. Between-subject variability is log-normal:
``log θ_i = log θ_{typ}(WT, age, CrCL) + ω ⊙ η_i``, ``η_i ~ N(0, I)`` (:func:`sample_log_parameters`).

The values are illustrative (a renally cleared oral drug dosed once daily), not those of a real compound.

References:
    M. Gibaldi, D. Perrier, *Pharmacokinetics*, 2nd ed., Marcel Dekker 1982 (two-compartment model, first-order
    absorption). N. H. G. Holford, L. B. Sheiner, "Understanding the dose-effect relationship", Clin. Pharmacokinet.
    6, 1981 (Emax, effect compartment). B. J. Anderson, N. H. G. Holford, "Mechanism-based concepts of size and
    maturity in pharmacokinetics", Annu. Rev. Pharmacol. Toxicol. 48, 2008 (allometry).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

import twinjax as tj
from twinjax.model.dynamics import AbstractDynamics

from ._utils import param

__all__ = [
    "PARAMETER_NAMES",
    "TwoCompartmentPKPD",
    "covariate_model",
    "oral_central_amount",
    "pkpd_from_log_parameters",
    "pkpd_twin",
    "sample_log_parameters",
]

#: the patient-specific parameters (their logs are what :func:`covariate_model` returns and a flow learns)
PARAMETER_NAMES = ("ka_per_h", "cl_L_h", "v1_L", "q_L_h", "v2_L", "ec50_mg_L")
#: between-subject standard deviations of the log-parameters, in the order of :data:`PARAMETER_NAMES`
DEFAULT_OMEGA = (0.4, 0.3, 0.25, 0.3, 0.3, 0.35)

DEPOT, CENTRAL, PERIPHERAL, ELIMINATED, EFFECT = range(5)


class TwoCompartmentPKPD(AbstractDynamics):
    r"""Two-compartment PK with first-order absorption, an effect compartment and a sigmoid Emax effect (module
    docstring for the equations).

    State ``x = [A_depot_mg, A_central_mg, A_peripheral_mg, A_eliminated_mg, C_effect_mg_L]``. Control ``u`` is
    empty (shape ``(0,)``) or ``[R_mg_h]``, a zero-order infusion into the central compartment. Oral doses are
    boluses into the depot: add them to the state (:meth:`regimen` does so for a repeated oral regimen).

    Arguments:
        ka_per_h: absorption rate constant ``k_a`` (1/h).
        cl_L_h: clearance ``CL`` (L/h).
        v1_L: central volume ``V_1`` (L).
        q_L_h: inter-compartmental clearance ``Q`` (L/h).
        v2_L: peripheral volume ``V_2`` (L).
        e0: baseline effect ``E_0`` (effect units; default 0).
        emax: maximal drug effect ``E_max`` (default 100, e.g. % inhibition).
        ec50_mg_L: effect-site concentration of half-maximal effect (mg/L).
        hill: Hill coefficient ``h`` (default 1.5).
        keo_per_h: effect-compartment equilibration rate ``k_{e0}`` (1/h).

    Example:
        ```python
        model = TwoCompartmentPKPD()
        ts, xs = model.regimen(100.0, 24.0, 7, 24)  # 100 mg once daily for a week, hourly states
        model.effect(xs[:, EFFECT])
        ```
    """

    ka_per_h: Float[ArrayLike, ""] = param(0.8)
    cl_L_h: Float[ArrayLike, ""] = param(4.0)
    v1_L: Float[ArrayLike, ""] = param(15.0)
    q_L_h: Float[ArrayLike, ""] = param(6.0)
    v2_L: Float[ArrayLike, ""] = param(40.0)
    e0: Float[ArrayLike, ""] = param(0.0)
    emax: Float[ArrayLike, ""] = param(100.0)
    ec50_mg_L: Float[ArrayLike, ""] = param(1.0)
    hill: Float[ArrayLike, ""] = param(1.5)
    keo_per_h: Float[ArrayLike, ""] = param(0.3)

    def system_matrix(self) -> Float[Array, "5 5"]:
        """The matrix ``A`` of the (linear) unforced system ``ẋ = A x``."""
        k10, k12, k21 = self.cl_L_h / self.v1_L, self.q_L_h / self.v1_L, self.q_L_h / self.v2_L
        ka, keo = self.ka_per_h, self.keo_per_h
        z = jnp.zeros_like(k10 + ka + keo)
        rows = [
            [-ka + z, z, z, z, z],
            [ka + z, -(k10 + k12), k21 + z, z, z],
            [z, k12 + z, -k21 + z, z, z],
            [z, k10 + z, z, z, z],
            [z, keo / self.v1_L + z, z, z, -keo + z],
        ]
        return jnp.stack([jnp.stack(r) for r in rows])

    def vector_field(
        self, t: Float[ArrayLike, ""], x: Float[Array, " 5"], u: Float[Array, " control"]
    ) -> Float[Array, " 5"]:
        """``dx/dt`` (mg/h for the amounts, mg/L/h for the effect-site concentration)."""
        if u.shape not in ((0,), (1,)):
            raise ValueError(f"control must be empty (shape (0,)) or [infusion_mg_h]; got shape {u.shape}.")
        rate = u[0] if u.shape[0] == 1 else jnp.zeros((), x.dtype)
        dx = self.system_matrix().astype(x.dtype) @ x
        return dx.at[CENTRAL].add(rate).astype(x.dtype)

    def concentration(self, x: Float[Array, "*batch 5"]) -> Float[Array, "*batch"]:
        """Plasma (central) concentration ``C = A_c / V_1`` (mg/L)."""
        return x[..., CENTRAL] / self.v1_L

    def effect(self, ce_mg_L: Float[ArrayLike, "*batch"]) -> Float[Array, "*batch"]:
        """Sigmoid Emax effect ``E_0 + E_max C^h / (EC_50^h + C^h)`` at effect-site concentration ``ce_mg_L``."""
        c = jnp.maximum(jnp.asarray(ce_mg_L), 0.0)
        ratio = (c / self.ec50_mg_L) ** self.hill
        return self.e0 + self.emax * ratio / (1.0 + ratio)

    def regimen(
        self, dose_mg: Float[ArrayLike, ""], interval_h: float, n_doses: int, steps_per_interval: int
    ) -> tuple[Float[Array, " time"], Float[Array, "time 5"]]:
        """Exact states under a repeated oral regimen: ``dose_mg`` into the depot at ``t = 0, τ, …, (n − 1)τ``.

        The system is linear, so one step of ``h = τ / steps`` is the matrix exponential ``e^{A h}`` (no solver
        error); one ``lax.scan`` over all steps. Saved states at a dose time are those just after the dose.

        Arguments:
            dose_mg: oral dose (mg).
            interval_h: dosing interval ``τ`` (h).
            n_doses: number of doses.
            steps_per_interval: saved states per interval.

        Returns:
            ``(ts, xs)``: times ``k h`` for ``k = 0 … n_doses · steps`` (h) and the states ``(time, 5)``.

        Raises:
            ValueError: a non-positive interval or count.
        """
        if not (isinstance(n_doses, int) and n_doses >= 1):
            raise ValueError(f"`n_doses` must be a positive int, got {n_doses!r}.")
        if not (isinstance(steps_per_interval, int) and steps_per_interval >= 1):
            raise ValueError(f"`steps_per_interval` must be a positive int, got {steps_per_interval!r}.")
        if not (isinstance(interval_h, (int, float)) and interval_h > 0):
            raise ValueError(f"`interval_h` must be a positive number, got {interval_h!r}.")
        h = interval_h / steps_per_interval
        dose = jnp.asarray(dose_mg, jnp.result_type(float))
        prop = jax.scipy.linalg.expm(self.system_matrix().astype(dose.dtype) * h)
        n = n_doses * steps_per_interval

        def step(x, k):
            x = x.at[DEPOT].add(jnp.where(k % steps_per_interval == 0, dose, 0.0))
            return prop @ x, x

        x_end, xs = jax.lax.scan(step, jnp.zeros(5, dose.dtype), jnp.arange(n))
        ts = h * jnp.arange(n + 1, dtype=dose.dtype)
        return ts, jnp.concatenate([xs, x_end[None]])


def oral_central_amount(
    model: TwoCompartmentPKPD, dose_mg: Float[ArrayLike, ""], t_h: Float[ArrayLike, " time"]
) -> Float[Array, " time"]:
    r"""Closed-form central amount after a single oral dose at ``t = 0`` (triexponential; Gibaldi & Perrier):

    $$ A_c(t) = D k_a \sum_{\lambda \in \{\alpha, \beta, k_a\}} \frac{(k_{21} - \lambda) e^{-\lambda t}}
       {\prod_{\mu \ne \lambda} (\mu - \lambda)}, $$

    with ``k_{10} = CL/V_1``, ``k_{12} = Q/V_1``, ``k_{21} = Q/V_2`` and the disposition rates ``α > β`` the roots
    of ``λ² − (k_{10} + k_{12} + k_{21}) λ + k_{10} k_{21} = 0``. Valid when ``k_a`` differs from ``α`` and ``β``.
    """
    k10, k12, k21 = model.cl_L_h / model.v1_L, model.q_L_h / model.v1_L, model.q_L_h / model.v2_L
    ka = model.ka_per_h
    s = k10 + k12 + k21
    root = jnp.sqrt(s**2 - 4.0 * k10 * k21)
    alpha, beta = 0.5 * (s + root), 0.5 * (s - root)
    t = jnp.asarray(t_h)
    terms = (
        (k21 - alpha) / ((ka - alpha) * (beta - alpha)) * jnp.exp(-alpha * t)
        + (k21 - beta) / ((ka - beta) * (alpha - beta)) * jnp.exp(-beta * t)
        + (k21 - ka) / ((alpha - ka) * (beta - ka)) * jnp.exp(-ka * t)
    )
    return dose_mg * ka * terms


def covariate_model(
    weight_kg: Float[ArrayLike, "*batch"], age_yr: Float[ArrayLike, "*batch"], crcl_mL_min: Float[ArrayLike, "*batch"]
) -> Float[Array, "*batch 6"]:
    r"""Log typical parameters ``log θ_typ`` (order :data:`PARAMETER_NAMES`) of patients with the given covariates.

    ``CL = 4 (WT/70)^{0.75} (0.35 + 0.65 CrCL/100) (age/40)^{−0.15}`` L/h (65 % renal at CrCL 100 mL/min),
    ``V_1 = 15 WT/70`` L, ``Q = 6 (WT/70)^{0.75}`` L/h, ``V_2 = 40 (WT/70) (age/40)^{0.2}`` L, ``k_a = 0.8``/h,
    ``EC_50 = 1 (age/40)^{−0.1}`` mg/L (slightly more sensitive older patients).

    Arguments:
        weight_kg: body weight (kg), positive.
        age_yr: age (years), positive.
        crcl_mL_min: creatinine clearance (mL/min), non-negative.

    Returns:
        ``(*batch, 6)`` log-parameters.
    """
    wt, age, crcl = (jnp.asarray(v, jnp.result_type(float)) for v in (weight_kg, age_yr, crcl_mL_min))
    wt, age, crcl = jnp.broadcast_arrays(wt, age, crcl)
    lw, la = jnp.log(wt / 70.0), jnp.log(age / 40.0)
    log_cl = jnp.log(4.0) + 0.75 * lw + jnp.log(0.35 + 0.65 * crcl / 100.0) - 0.15 * la
    cols = [
        jnp.full_like(lw, jnp.log(0.8)),
        log_cl,
        jnp.log(15.0) + lw,
        jnp.log(6.0) + 0.75 * lw,
        jnp.log(40.0) + lw + 0.2 * la,
        -0.1 * la,
    ]
    return jnp.stack(cols, axis=-1)


def sample_log_parameters(
    key: PRNGKeyArray,
    weight_kg: Float[ArrayLike, " n"],
    age_yr: Float[ArrayLike, " n"],
    crcl_mL_min: Float[ArrayLike, " n"],
    omega: Float[ArrayLike, " 6"] = DEFAULT_OMEGA,
) -> Float[Array, "n 6"]:
    """Individual log-parameters ``log θ_i = covariate_model(WT_i, age_i, CrCL_i) + ω ⊙ η_i``, ``η_i ~ N(0, I)``.

    Raises:
        ValueError: ``omega`` not of length 6 or negative.
    """
    typical = covariate_model(weight_kg, age_yr, crcl_mL_min)
    omega = jnp.asarray(omega, typical.dtype)
    if omega.shape != (len(PARAMETER_NAMES),):
        raise ValueError(f"`omega` must have shape ({len(PARAMETER_NAMES)},), got {omega.shape}.")
    if not isinstance(omega, jax.core.Tracer) and bool(jnp.any(omega < 0)):
        raise ValueError(f"`omega` must be non-negative, got {omega}.")
    return typical + omega * jax.random.normal(key, typical.shape, typical.dtype)


def pkpd_from_log_parameters(log_params: Float[Array, " 6"], **fixed) -> TwoCompartmentPKPD:
    """The patient model with the parameters ``exp(log_params)`` (order :data:`PARAMETER_NAMES`); ``fixed`` sets the
    population-level fields (``e0``, ``emax``, ``hill``, ``keo_per_h``). ``jax.vmap`` over a batch of patients works
    (the fields become batched)."""
    if log_params.shape[-1:] != (len(PARAMETER_NAMES),):
        raise ValueError(f"`log_params` must end in an axis of {len(PARAMETER_NAMES)}, got shape {log_params.shape}.")
    values = jnp.exp(log_params)
    return TwoCompartmentPKPD(**{name: values[..., i] for i, name in enumerate(PARAMETER_NAMES)}, **fixed)


class _PlasmaConcentration(eqx.Module):
    """Observation ``C = A_c / V_1`` (mg/L) of the twin."""

    v1_L: Float[ArrayLike, ""]

    def __call__(
        self, t: Float[ArrayLike, ""], x: Float[Array, " 5"], u: Float[Array, " control"]
    ) -> Float[Array, " 1"]:
        return (x[CENTRAL] / self.v1_L)[None]


def pkpd_twin(
    model: TwoCompartmentPKPD | None = None, *, dt_h: float = 1.0, concentration_sd_mg_L: float = 0.05
) -> tj.StateSpaceModel:
    """A patient twin: plasma concentration measured with Gaussian noise every ``dt_h`` hours; ``u`` empty or an
    infusion rate ``[R_mg_h]``. Initial belief: drug-free, ``N(0, 10⁻⁶ I)``. Default model :class:`TwoCompartmentPKPD`
    ``()``."""
    model = TwoCompartmentPKPD() if model is None else model
    return tj.StateSpaceModel(
        model,
        tj.GaussianObservation(_PlasmaConcentration(model.v1_L), jnp.array([[concentration_sd_mg_L**2]])),
        tj.Gaussian(jnp.zeros(5), 1e-6 * jnp.eye(5)),
        dt_h,
        control_dim=1,
    )
