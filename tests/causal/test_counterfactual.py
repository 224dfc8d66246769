"""``twinjax.causal.counterfactual`` dispatches to the SCM and the twin implementations with the same answers, and names
what is missing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import twinjax as tj


def test_scm_counterfactual_through_the_entry_point_is_the_method():
    scm = tj.causal.linear_gaussian_scm(np.array([[0.0, 2.0], [0.0, 0.0]]), np.array([1.0, 0.5]), ("X", "Y"))
    evidence = {"X": 1.0, "Y": 2.5}
    vals, w = tj.causal.counterfactual(scm, evidence, tj.causal.do(X=0.0), key=jax.random.key(0), n=16)
    ref_vals, ref_w = scm.counterfactual(jax.random.key(0), evidence, tj.causal.do(X=0.0), n=16)
    np.testing.assert_array_equal(np.asarray(vals["Y"]), np.asarray(ref_vals["Y"]))
    np.testing.assert_array_equal(np.asarray(w), np.asarray(ref_w))
    np.testing.assert_allclose(np.asarray(vals["Y"]), 2.5 - 2.0, rtol=1e-12)  # additive noise: exact abduction
    with pytest.raises(ValueError, match="key"):
        tj.causal.counterfactual(scm, evidence, tj.causal.do(X=0.0))


def test_twin_counterfactual_through_the_entry_point_is_twin_counterfactual():
    lg = tj.LinearGaussianSSM(
        A=jnp.array([[0.9]]), B=jnp.array([[1.0]]), C=jnp.eye(1), D=None, Q=0.1 * jnp.eye(1), R=0.2 * jnp.eye(1),
        m0=jnp.zeros(1), P0=jnp.eye(1),
    )  # fmt: skip
    ts = jnp.arange(20, dtype=jnp.float64)
    path = tj.simulate(lg, None, ts, controls=jnp.ones((20, 1)), key=jax.random.key(1))
    intervention = tj.causal.do(controls=jnp.zeros((20, 1)))
    got = tj.causal.counterfactual(lg, path, intervention, smoother="kalman")
    ref = tj.causal.twin_counterfactual(lg, path, intervention, smoother="kalman")
    np.testing.assert_array_equal(np.asarray(got.states), np.asarray(ref.states))
    with pytest.raises((TypeError, ValueError), match="twin_counterfactual"):
        tj.causal.counterfactual(lg, path, tj.causal.do(X=1.0), smoother="kalman")
