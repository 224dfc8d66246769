"""`twinjax.causal.identification`: the adjustment formulas are exact on population data (every configuration
repeated in proportion to its exact probability, so plug-in frequencies are the true probabilities) against the SCM's
own ``do`` by enumeration; the linear estimators against the closed form within k OLS / delta-method SE; clear
errors when a query is not identified."""

import itertools

import jax
import numpy as np
import pytest

from twinjax.causal.graph import DAG
from twinjax.causal.identification import (
    NotIdentifiedError,
    backdoor_adjustment,
    estimate_effect,
    frontdoor_adjustment,
    identify,
)
from twinjax.causal.intervention import do
from twinjax.causal.scm import discrete_scm, exact_query, linear_gaussian_moments, linear_gaussian_scm

K = 4.0


def tenths(*p1):
    """A table whose P(V=1 | pa) are the given tenths (so every joint probability is a multiple of 10^-k)."""
    p = np.array(p1, dtype=float).reshape((2,) * int(np.log2(len(p1))) if len(p1) > 1 else ())
    return np.stack([1 - p, p], axis=-1)


def population(scm, digits):
    """Rows of all configurations, each repeated P(config) · 10^digits times (exact for tenths tables)."""
    rows = []
    for values in itertools.product((0, 1), repeat=len(scm.names)):
        assign = dict(zip(scm.names, values))
        count = exact_query(scm, assign) * 10**digits
        assert abs(count - round(count)) < 1e-6
        rows += [values] * int(round(count))
    table = np.array(rows, dtype=float)
    assert len(table) == 10**digits
    return {v: table[:, i] for i, v in enumerate(scm.names) if v not in scm.latent}


def confounded_scm():
    """Z → X, Z → Y, X → Y, and a hidden W → Z, W → Y (Z still blocks the back-door path X ← Z ← W → Y)."""
    return discrete_scm(
        {
            "W": ((), tenths(0.3)),
            "Z": (("W",), tenths(0.2, 0.7)),
            "X": (("Z",), tenths(0.3, 0.8)),
            "Y": (("W", "Z", "X"), tenths(0.1, 0.4, 0.3, 0.6, 0.2, 0.5, 0.7, 0.9)),
        },
        latent=("W",),
    )


def frontdoor_scm():
    return discrete_scm(
        {
            "U": ((), tenths(0.4)),
            "X": (("U",), tenths(0.2, 0.9)),
            "M": (("X",), tenths(0.1, 0.8)),
            "Y": (("U", "M"), tenths(0.2, 0.5, 0.6, 0.9)),
        },
        latent=("U",),
    )


def test_backdoor_adjustment_is_exact_on_population_data():
    scm = confounded_scm()
    data = population(scm, 4)
    ident = identify(scm.graph, "X", "Y")
    assert ident.adjustment == ("Z",) and ident.criterion == "backdoor"
    for x in (0, 1):
        truth = exact_query(scm, {"Y": 1}, None, do(X=x))
        assert abs(float(backdoor_adjustment(data, "X", "Y", ["Z"], x)) - truth) < 1e-12
        assert abs(float(estimate_effect(data, scm.graph, "X", "Y", x)) - truth) < 1e-12
        naive = data["Y"][data["X"] == x].mean()
        assert abs(naive - truth) > 0.02  # confounded: conditioning is not intervening


def test_frontdoor_adjustment_is_exact_on_population_data():
    scm = frontdoor_scm()
    data = population(scm, 4)
    with pytest.raises(NotIdentifiedError, match=r"X <- U -> Y"):
        identify(scm.graph, "X", "Y", "backdoor")
    assert identify(scm.graph, "X", "Y", "frontdoor").adjustment == ("M",)
    for x in (0, 1):
        truth = exact_query(scm, {"Y": 1}, None, do(X=x))
        est = float(estimate_effect(data, scm.graph, "X", "Y", x, criterion="frontdoor"))
        assert abs(est - truth) < 1e-12
        assert abs(data["Y"][data["X"] == x].mean() - truth) > 0.05


def test_linear_backdoor_within_ols_se():
    """V = (Z, X, Y), Z → X → Y, Z → Y: the regression adjustment's ATE is the OLS coefficient of X; its SE is
    σ̂ √[(DᵀD)⁻¹]_xx."""
    w = np.array([[0.0, 1.2, -0.8], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    sd = np.array([1.0, 0.7, 0.9])
    names = ("Z", "X", "Y")
    scm = linear_gaussian_scm(w, sd, names, intercept=np.array([0.3, 0.0, 1.0]))
    truth = float(
        linear_gaussian_moments(w, sd, names, np.array([0.3, 0.0, 1.0]), {"X": 1.0})[0][2]
        - linear_gaussian_moments(w, sd, names, np.array([0.3, 0.0, 1.0]), {"X": 0.0})[0][2]
    )
    assert truth == pytest.approx(0.5, abs=1e-12)
    data = {k: np.asarray(v) for k, v in scm.sample(jax.random.key(0), 5000).items()}
    ate = float(
        backdoor_adjustment(data, "X", "Y", ["Z"], 1.0, "linear")
        - backdoor_adjustment(data, "X", "Y", ["Z"], 0.0, "linear")
    )
    d = np.stack([np.ones(5000), data["X"], data["Z"]], axis=1)
    coef = np.linalg.lstsq(d, data["Y"], rcond=None)[0]
    sigma = np.sqrt(np.sum((data["Y"] - d @ coef) ** 2) / (5000 - 3))
    se = sigma * np.sqrt(np.linalg.inv(d.T @ d)[1, 1])
    assert abs(ate - truth) < K * se
    naive = np.polyfit(data["X"], data["Y"], 1)[0]
    assert abs(naive - truth) > 10 * se


def test_linear_frontdoor_within_delta_method_se():
    names = ("U", "X", "M", "Y")
    w = np.zeros((4, 4))
    w[0, 1], w[0, 3], w[1, 2], w[2, 3] = 1.0, 1.5, 0.8, -0.6
    sd = np.array([1.0, 0.5, 0.5, 0.5])
    scm = linear_gaussian_scm(w, sd, names, latent=("U",))
    n = 5000
    data = {k: np.asarray(v) for k, v in scm.sample(jax.random.key(1), n).items() if k != "U"}
    est = float(
        frontdoor_adjustment(data, "X", "Y", ["M"], 1.0, "linear")
        - frontdoor_adjustment(data, "X", "Y", ["M"], 0.0, "linear")
    )
    # delta method for a·c: a from M ~ X, c from Y ~ M + X
    dx = np.stack([np.ones(n), data["X"]], 1)
    a_coef = np.linalg.lstsq(dx, data["M"], rcond=None)[0]
    var_a = np.var(data["M"] - dx @ a_coef) * np.linalg.inv(dx.T @ dx)[1, 1]
    dm = np.stack([np.ones(n), data["M"], data["X"]], 1)
    c_coef = np.linalg.lstsq(dm, data["Y"], rcond=None)[0]
    var_c = np.var(data["Y"] - dm @ c_coef) * np.linalg.inv(dm.T @ dm)[1, 1]
    se = np.sqrt(c_coef[1] ** 2 * var_a + a_coef[1] ** 2 * var_c)
    assert abs(est - 0.8 * -0.6) < K * se
    assert abs(np.polyfit(data["X"], data["Y"], 1)[0] - 0.8 * -0.6) > 10 * se


def test_not_identified_errors_name_the_reason():
    g = DAG([("X", "M"), ("M", "Y"), ("Z", "X"), ("Z", "Y")], bidirected=[("X", "Y")])
    with pytest.raises(NotIdentifiedError, match=r"back-door path X <- U\[X,Y\] -> Y is open"):
        identify(g, "X", "Y", "backdoor", adjustment=["Z"])
    with pytest.raises(NotIdentifiedError, match="no set of observed nodes"):
        identify(g, "X", "Y", "backdoor")
    with pytest.raises(ValueError, match="descendants of 'X'"):  # NotIdentifiedError is a ValueError
        identify(DAG([("X", "M"), ("M", "Y")]), "X", "Y", "backdoor", adjustment=["M"])
    g2 = DAG([("X", "M"), ("M", "Y"), ("X", "Y")], bidirected=[("X", "Y")])
    with pytest.raises(NotIdentifiedError, match=r"\(i\) the directed paths"):
        identify(g2, "X", "Y", "frontdoor", adjustment="M")
    with pytest.raises(ValueError, match="criterion must be"):
        identify(g, "X", "Y", "instrument")
    with pytest.raises(ValueError, match="latent"):
        identify(g, "U[X,Y]", "Y")


def test_estimator_input_errors():
    data = {"X": np.array([0.0, 0.0, 1.0, 1.0]), "Z": np.array([0.0, 1.0, 0.0, 0.0]), "Y": np.ones(4)}
    with pytest.raises(ValueError, match="positivity"):
        backdoor_adjustment(data, "X", "Y", ["Z"], 1.0)
    with pytest.raises(ValueError, match="no column 'Q'"):
        backdoor_adjustment(data, "X", "Y", ["Q"], 1.0)
    with pytest.raises(ValueError, match="non-negative integer"):
        backdoor_adjustment({**data, "Z": np.array([0.5, 1.0, 0.0, 1.0])}, "X", "Y", ["Z"], 1.0)
    with pytest.raises(ValueError, match="kind must be"):
        frontdoor_adjustment(data, "X", "Y", ["Z"], 1.0, kind="logistic")
    with pytest.raises(ValueError, match="no unit has X=2.0"):
        frontdoor_adjustment(data, "X", "Y", ["Z"], 2.0)
