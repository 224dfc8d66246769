"""The PK/PD patient model against the closed-form triexponential, SciPy, mass balance and the Emax definition."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import simpson, solve_ivp

from physics.pharmacology import (
    PARAMETER_NAMES,
    TwoCompartmentPKPD,
    covariate_model,
    oral_central_amount,
    pkpd_from_log_parameters,
    pkpd_twin,
    sample_log_parameters,
)

MODEL = TwoCompartmentPKPD(ka_per_h=1.3, cl_L_h=3.0, v1_L=12.0, q_L_h=7.0, v2_L=30.0, keo_per_h=0.4)
DOSE = 100.0


def _solve(model, x0, ts, u=jnp.zeros(0)):
    term = diffrax.ODETerm(lambda t, x, _: model.vector_field(t, x, u))
    ctrl = diffrax.PIDController(rtol=1e-12, atol=1e-12)
    sol = diffrax.diffeqsolve(
        term, diffrax.Dopri8(), ts[0], ts[-1], 0.01, x0, saveat=diffrax.SaveAt(ts=ts), stepsize_controller=ctrl,
        max_steps=100_000,
    )  # fmt: skip
    return sol.ys


def test_single_oral_dose_matches_the_triexponential_and_scipy_and_conserves_mass():
    ts = jnp.linspace(0.0, 72.0, 73)
    x0 = jnp.zeros(5).at[0].set(DOSE)
    ys = _solve(MODEL, x0, ts)
    exact = oral_central_amount(MODEL, DOSE, ts)
    assert float(jnp.max(jnp.abs(ys[:, 1] - exact))) < 1e-8 * DOSE
    ref = solve_ivp(
        lambda t, x: np.asarray(MODEL.system_matrix()) @ x, (0, 72), np.asarray(x0), "DOP853", t_eval=np.asarray(ts),
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(exact), ref.y[1], atol=1e-8 * DOSE)
    # depot + central + peripheral + eliminated = dose, and AUC = eliminated / CL
    np.testing.assert_allclose(np.asarray(ys[:, :4].sum(1)), DOSE, rtol=1e-12)
    fine = jnp.linspace(0.0, 72.0, 2881)
    auc = simpson(np.asarray(MODEL.concentration(_solve(MODEL, x0, fine))), x=np.asarray(fine))
    np.testing.assert_allclose(float(ys[-1, 3]) / 3.0, auc, rtol=1e-8)  # Simpson's error on a 1.5 min grid ~1e-10


def test_emax_gives_half_effect_at_ec50_and_the_effect_site_follows_plasma():
    assert float(MODEL.effect(MODEL.ec50_mg_L)) == pytest.approx(float(MODEL.e0 + MODEL.emax / 2), rel=1e-14)
    assert float(MODEL.effect(0.0)) == pytest.approx(float(MODEL.e0))
    assert float(MODEL.effect(1e6)) == pytest.approx(float(MODEL.e0 + MODEL.emax), rel=1e-6)
    # constant infusion R: steady state C = C_e = R / CL
    ys = _solve(MODEL, jnp.zeros(5), jnp.array([0.0, 2000.0]), u=jnp.array([9.0]))
    np.testing.assert_allclose(float(MODEL.concentration(ys[-1])), 9.0 / 3.0, rtol=1e-9)
    np.testing.assert_allclose(float(ys[-1, 4]), 9.0 / 3.0, rtol=1e-9)


def test_regimen_is_exact_superposition_of_single_doses():
    ts, xs = jax.jit(lambda d: MODEL.regimen(d, 12.0, 4, 12))(DOSE)
    assert ts.shape == (49,) and xs.shape == (49, 5)
    expected = sum(
        oral_central_amount(MODEL, DOSE, jnp.maximum(ts - 12.0 * k, 0.0)) * (ts >= 12.0 * k) for k in range(4)
    )
    np.testing.assert_allclose(np.asarray(xs[:, 1]), np.asarray(expected), atol=1e-10 * DOSE)
    np.testing.assert_allclose(np.asarray(xs[:, :4].sum(1)), DOSE * np.minimum(np.floor(ts / 12.0) + 1, 4), rtol=1e-12)
    with pytest.raises(ValueError, match="n_doses"):
        MODEL.regimen(DOSE, 12.0, 0, 12)


def test_covariate_model_scales_allometrically_and_with_renal_function():
    th = jnp.exp(
        covariate_model(jnp.array([70.0, 140.0, 70.0]), jnp.array([40.0, 40.0, 40.0]), jnp.array([100.0, 100.0, 0.0]))
    )
    cl, v1 = th[:, PARAMETER_NAMES.index("cl_L_h")], th[:, PARAMETER_NAMES.index("v1_L")]
    np.testing.assert_allclose(float(cl[1] / cl[0]), 2.0**0.75, rtol=1e-12)
    np.testing.assert_allclose(float(v1[1] / v1[0]), 2.0, rtol=1e-12)
    np.testing.assert_allclose(float(cl[2] / cl[0]), 0.35, rtol=1e-12)  # the non-renal fraction
    models = jax.vmap(pkpd_from_log_parameters)(jnp.log(th))
    np.testing.assert_allclose(np.asarray(models.cl_L_h), np.asarray(cl), rtol=1e-12)


def test_between_subject_variability_has_the_stated_log_normal_moments(key):
    n = 20_000
    omega = jnp.array([0.4, 0.3, 0.25, 0.3, 0.3, 0.35])
    wt, age, crcl = jnp.full(n, 80.0), jnp.full(n, 55.0), jnp.full(n, 70.0)
    th = sample_log_parameters(key, wt, age, crcl, omega)
    typical = covariate_model(80.0, 55.0, 70.0)
    z = (th.mean(0) - typical) / (omega / np.sqrt(n))
    assert float(jnp.max(jnp.abs(z))) < 4.0
    sd_se = omega / np.sqrt(2 * n)  # standard error of a normal sample sd
    assert float(jnp.max(jnp.abs(th.std(0) - omega) / sd_se)) < 4.0
    np.testing.assert_array_equal(np.asarray(th), np.asarray(sample_log_parameters(key, wt, age, crcl, omega)))
    with pytest.raises(ValueError, match="omega"):
        sample_log_parameters(key, wt, age, crcl, -omega)


def test_twin_observes_plasma_concentration_and_bad_controls_raise():
    twin = pkpd_twin(MODEL)
    x = jnp.array([0.0, 24.0, 5.0, 1.0, 0.5])
    obs = twin.observation.fn(0.0, x, jnp.zeros(1))
    np.testing.assert_allclose(np.asarray(obs), [2.0])
    with pytest.raises(ValueError, match="control"):
        MODEL.vector_field(0.0, x, jnp.zeros(2))
