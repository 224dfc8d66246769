"""Safe exploration: the conjugate update against a dense Gaussian, the scores against their definitions, the
certified set against the credible ellipsoid, the choice inside it, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chi2

from twinjax.calibrate import BayesianLinearRegression
from twinjax.control import exploration


def _problem(seed=0, p=3, n=4):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(p, p))
    return rng.normal(size=p), a @ a.T + 0.5 * np.eye(p), rng.normal(size=(n, p)), rng.normal(size=n), 0.3**2


@pytest.mark.strict
def test_conjugate_update_matches_dense_gaussian_conditioning():
    mean, cov, phi, y, s2 = _problem()
    m, c = exploration.bayes_linear_update(mean, cov, phi, y, s2)
    # the joint Gaussian of (θ, y), conditioned on y by the Schur complement
    joint_cov = np.block([[cov, cov @ phi.T], [phi @ cov, phi @ cov @ phi.T + s2 * np.eye(len(y))]])
    p = len(mean)
    k = joint_cov[:p, p:] @ np.linalg.inv(joint_cov[p:, p:])
    np.testing.assert_allclose(m, mean + k @ (y - phi @ mean), rtol=1e-10)
    np.testing.assert_allclose(c, joint_cov[:p, :p] - k @ joint_cov[p:, :p], rtol=1e-9, atol=1e-12)
    # one batch = the sequence of rank-one updates (twinjax.calibrate's BayesianLinearRegression)
    belief = BayesianLinearRegression(mean, cov, s2)
    for row, yi in zip(phi, y):
        belief = belief.update(row, yi)
    np.testing.assert_allclose(belief.mean, m, rtol=1e-10)
    np.testing.assert_allclose(belief.cov, c, rtol=1e-9, atol=1e-12)


def test_scores_match_their_definitions():
    mean, cov, phi, _, s2 = _problem(1)
    gain = exploration.information_gain(phi, cov, s2)
    for row, gi in zip(phi, gain):  # ½ (log det Σ − log det Σ⁺): the entropy drop of θ
        _, c = exploration.bayes_linear_update(mean, cov, row[None], np.zeros(1), s2)
        np.testing.assert_allclose(gi, 0.5 * (np.linalg.slogdet(cov)[1] - np.linalg.slogdet(c)[1]), rtol=1e-10)
    # leverage of the design's own rows = the ridge hat-matrix diagonal; with no design, ‖φ‖² / λ
    hat = phi @ np.linalg.solve(phi.T @ phi + 0.1 * np.eye(3), phi.T)
    np.testing.assert_allclose(exploration.leverage(phi, phi, 0.1), np.diag(hat), rtol=1e-10)
    np.testing.assert_allclose(exploration.leverage(phi, np.zeros((0, 3)), 2.0), np.sum(phi**2, 1) / 2.0, rtol=1e-12)
    # κ is the χ² radius
    for d, delta, rounds in ((1, 0.05, 1), (3, 1e-3, 25)):
        kappa = exploration.confidence_multiplier(delta, d, rounds)
        np.testing.assert_allclose(kappa**2, chi2.ppf(1 - delta / rounds, d), rtol=1e-8)


def _safety(z, theta):  # safe when limit − φ(z)ᵀθ ≥ 0, φ = (1, z, z²)
    return 2.0 - jnp.stack([1.0, z[0], z[0] ** 2]) @ theta


@pytest.mark.strict
def test_certified_set_is_safe_on_the_whole_credible_ellipsoid():
    mean = jnp.array([0.2, 0.5, 0.3])
    cov = jnp.diag(jnp.array([0.1, 0.2, 0.1]) ** 2)
    cands = jnp.linspace(-2.0, 2.0, 81)[:, None]
    kappa = exploration.confidence_multiplier(0.01, 3)
    cert = exploration.certify(_safety, cands, mean, cov, kappa)
    assert 0 < int(cert.certified.sum()) < len(cands)
    # θ on the boundary of the κ-ellipsoid: every certified candidate stays safe for all of them
    dirs = jax.random.normal(jax.random.key(0), (4000, 3))
    thetas = mean[None, :] + kappa * (dirs / jnp.linalg.norm(dirs, axis=1, keepdims=True)) @ jnp.sqrt(cov)
    s = jax.vmap(lambda th: jax.vmap(lambda z: _safety(z, th))(cands))(thetas)
    assert float(jnp.min(jnp.where(cert.certified, s, jnp.inf))) >= 0
    # the bound is attained: θ* = μ + κΣφ/√(φᵀΣφ) (the worst point of the ellipsoid) gives exactly the robust value
    phi = jnp.concatenate([jnp.ones_like(cands), cands, cands**2], axis=1)
    worst = mean[None, :] + kappa * (phi @ cov) / jnp.sqrt(jnp.sum((phi @ cov) * phi, axis=1, keepdims=True))
    np.testing.assert_allclose(jax.vmap(_safety)(cands, worst), cert.robust[:, 0], rtol=1e-10, atol=1e-12)
    # κ = 0 certifies more (the posterior mean); a smaller Σ certifies a superset
    assert bool(jnp.all(exploration.certify(_safety, cands, mean, cov, 0.0).certified >= cert.certified))
    smaller = exploration.certify(_safety, cands, mean, 0.25 * cov, kappa).certified
    assert bool(jnp.all(smaller >= cert.certified)) and int(smaller.sum()) > int(cert.certified.sum())


@pytest.mark.strict
def test_next_point_stays_inside_the_certified_set():
    scores = jnp.array([5.0, 1.0, 3.0, 4.0])
    cert = jnp.array([False, True, True, False])
    i, found = exploration.next_point(scores, cert)
    assert int(i) == 2 and bool(found)
    _, found = exploration.next_point(scores, jnp.zeros(4, bool))
    assert not bool(found)
    picks = jax.vmap(lambda k: exploration.random_safe_point(k, cert)[0])(jax.random.split(jax.random.key(0), 200))
    assert set(np.asarray(picks).tolist()) == {1, 2}
    i, found = exploration.random_safe_point(jax.random.key(1), jnp.zeros(4, bool))
    assert not bool(found) and int(i) == 0


def test_bad_input_is_rejected():
    mean, cov, phi, y, s2 = _problem()
    with pytest.raises(ValueError, match="features"):
        exploration.bayes_linear_update(mean, cov, phi[:, :2], y, s2)
    with pytest.raises(ValueError, match="ys"):
        exploration.bayes_linear_update(mean, cov, phi, y[:2], s2)
    with pytest.raises(ValueError, match="noise_var"):
        exploration.information_gain(phi, cov, -1.0)
    with pytest.raises(ValueError, match="cov"):
        exploration.certify(_safety, jnp.zeros((3, 1)), mean, -cov, 1.0)
    with pytest.raises(ValueError, match="kappa"):
        exploration.certify(_safety, jnp.zeros((3, 1)), mean, cov, -1.0)
    with pytest.raises(ValueError, match="certified"):
        exploration.next_point(jnp.ones(3), jnp.ones(4, bool))
    with pytest.raises(ValueError, match="delta"):
        exploration.confidence_multiplier(1.5, 3)
