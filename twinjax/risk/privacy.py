r"""Privacy accounting for DP-SGD: the Rényi-DP (RDP) accountant of the Poisson-subsampled Gaussian mechanism, and its
conversion to an ``(ε, δ)`` guarantee.

**Mechanism.** Each step draws a Poisson sample ``S`` of the records (each record independently with probability
``q``, the sampling rate), clips each record's contribution ``f(x)`` to L2 norm ``C`` and releases

$$ M(D) = \sum_{x \in S} f(x) + \mathcal{N}(0, \sigma^2 C^2 I), $$

with ``σ`` the noise multiplier (Abadi et al. 2016). The whole training run is ``T`` such steps, each seeing the
previous outputs (adaptive composition).

**Privacy unit.** Neighbouring datasets differ by adding or removing one record (the relation of dp-accounting's
``ADD_OR_REMOVE_ONE``). What a "record" is is the caller's choice and sets the meaning of the guarantee: with
per-example sampling it is one example; with per-operator sampling (all of an operator's data included or excluded
together, and clipped together) it is one operator's whole log.

**RDP of one step** (Mironov, Talwar, Zhang 2019). With ``μ₀ = N(0, σ²)`` and ``μ = (1 − q) μ₀ + q N(1, σ²)``, the
order-``α`` RDP is ``ε(α) = log(A_α) / (α − 1)`` with ``A_α = E_{z∼μ₀}[(μ(z)/μ₀(z))^α]``. For integer ``α``,

$$ A_\alpha = \sum_{i=0}^{\alpha} \binom{\alpha}{i} (1 - q)^{\alpha - i} q^i
              \exp\!\Big(\frac{i^2 - i}{2\sigma^2}\Big); $$

for fractional ``α`` the integral is split at ``z₀ = σ² log(1/q − 1) + 1/2`` into ``A_α = A₀ + A₁``,

$$ A_0 = \sum_{i \ge 0} \binom{\alpha}{i} q^i (1 - q)^{\alpha - i} e^{(i^2 - i)/2\sigma^2}
         \tfrac12 \operatorname{erfc}\!\Big(\frac{i - z_0}{\sqrt2\,\sigma}\Big), \qquad
   A_1 = \sum_{i \ge 0} \binom{\alpha}{i} q^{\alpha - i} (1 - q)^{i} e^{(j^2 - j)/2\sigma^2}
         \tfrac12 \operatorname{erfc}\!\Big(\frac{z_0 - j}{\sqrt2\,\sigma}\Big),\ j = \alpha - i, $$

summed until the terms are decreasing and ``e^{-30}`` below the total (at most 1000 terms; an order whose series has not
converged by then gets ``ε(α) = ∞`` and is never the optimum). Everything is computed in log space (log-add of the
terms), as in TF-Privacy / dp-accounting's ``rdp_privacy_accountant``, whose values these agree with. Special cases:
``q = 0`` gives ``ε(α) = 0``; ``q = 1`` is the plain Gaussian mechanism, ``ε(α) = α / (2σ²)``.

**Composition.** RDP adds over steps: ``ε_T(α) = T ε(α)`` (Mironov 2017, Prop. 1).

**Conversion to (ε, δ)-DP**, minimised over the orders:

- classic (Mironov 2017, Prop. 3): ``ε = min_α ε_T(α) + log(1/δ) / (α − 1)``;
- improved (Balle et al. 2020, Prop. 12 / Thm. 21; what dp-accounting's ``RdpAccountant`` reports):
  ``ε = min_α ε_T(α) + log(1 − 1/α) − (log δ + log α) / (α − 1)``, using only orders ``α > 1.01`` (the bound is
  unstable as ``α → 1``), and ``ε = 0`` at an order where ``δ² > 1 − exp(−ε_T(α))`` (Pinsker-type KL bound).

The RDP bound is an upper bound: the true ``ε`` of the mechanism is lower (a PLD / Fourier accountant gets closer). The
minimisation runs over a finite grid of orders, so a coarse grid gives a slightly larger (still valid) ``ε``.

References:
    M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov, K. Talwar, L. Zhang, "Deep learning with differential
    privacy", CCS 2016.
    I. Mironov, "Rényi differential privacy", CSF 2017.
    I. Mironov, K. Talwar, L. Zhang, "Rényi differential privacy of the sampled Gaussian mechanism", arXiv:1908.10530,
    2019.
    B. Balle, G. Barthe, M. Gaboardi, J. Hsu, T. Sato, "Hypothesis testing interpretations and Rényi differential
    privacy", AISTATS 2020.
"""

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np

__all__ = ["DEFAULT_RDP_ORDERS", "epsilon", "rdp_subsampled_gaussian", "rdp_to_epsilon"]

# dp-accounting's default orders (dp_accounting.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS, version 0.6.0)
DEFAULT_RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)

# the private helpers are unannotated: they run in tight loops, and the test run type-checks every annotated call
_MAX_TERMS_FRAC = 1000  # as dp-accounting: beyond this the fractional-order series counts as not converged
_CONVERSIONS = ("classic", "improved")


def _log_add(logx, logy):
    a, b = min(logx, logy), max(logx, logy)
    if a == -math.inf:
        return b
    return math.log1p(math.exp(a - b)) + b


def _log_comb(n, k):
    # log |binom(n, k)| for real n: for fractional n and k > n + 1 the coefficient alternates in sign, and the series
    # of Mironov, Talwar, Zhang (Sec. 3.3) sums the magnitudes, as dp-accounting does
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_erfc(x):
    """log(erfc(x)), accurate for large x, where erfc underflows (scipy-free stand-in for log 2 + log_ndtr(−√2 x))."""
    if x < 25.0:
        return math.log(math.erfc(x))
    # asymptotic series at infinity: erfc(x) ~ exp(−x² − 1/(2x²) + 5/(8x⁴) − …) / (x √π); the first omitted term is
    # 4881/(160 x¹⁰) < 4e-13 at x = 25, below double precision relative to log erfc(x) ≈ −x²
    return (
        -math.log(math.pi) / 2
        - math.log(x)
        - x**2
        - 0.5 * x**-2
        + 0.625 * x**-4
        - 37.0 / 24.0 * x**-6
        + 353.0 / 64.0 * x**-8
    )


def _log_a_int(q, sigma, alpha):
    log_a = -math.inf
    log_q, log1mq = math.log(q), math.log1p(-q)
    for i in range(alpha + 1):
        log_coef = _log_comb(alpha, i) + i * log_q + (alpha - i) * log1mq
        log_a = _log_add(log_a, log_coef + (i * i - i) / (2 * sigma**2))
    return log_a


def _log_a_frac(q, sigma, alpha):
    log_a0 = log_a1 = -math.inf
    last_s0 = last_s1 = -math.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log_q, log1mq = math.log(q), math.log1p(-q)
    log_half, sqrt2_sigma = math.log(0.5), math.sqrt(2) * sigma
    for i in range(_MAX_TERMS_FRAC):
        log_coef = _log_comb(alpha, i)
        j = alpha - i
        log_e0 = log_half + _log_erfc((i - z0) / sqrt2_sigma)
        log_e1 = log_half + _log_erfc((z0 - j) / sqrt2_sigma)
        log_s0 = log_coef + i * log_q + j * log1mq + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_coef + j * log_q + i * log1mq + (j * j - j) / (2 * sigma**2) + log_e1
        log_a0 = _log_add(log_a0, log_s0)
        log_a1 = _log_add(log_a1, log_s1)
        total = _log_add(log_a0, log_a1)
        if log_s0 < last_s0 and log_s1 < last_s1 and max(log_s0, log_s1) < total - 30:
            return total
        last_s0, last_s1 = log_s0, log_s1
    return math.inf


def _check_probability(name, value, *, closed):
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"`{name}` must be a real number, got {value!r}.")
    value = float(value)
    ok = 0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0
    if not ok:
        interval = "[0, 1]" if closed else "(0, 1)"
        raise ValueError(f"`{name}` must lie in {interval}, got {value!r}.")
    return value


def _check_noise_multiplier(noise_multiplier):
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, Real):
        raise ValueError(f"`noise_multiplier` must be a real number, got {noise_multiplier!r}.")
    sigma = float(noise_multiplier)
    if not (0.0 < sigma < math.inf):
        raise ValueError(f"`noise_multiplier` must be positive and finite, got {noise_multiplier!r}.")
    return sigma


def _check_orders(orders):
    try:
        arr = np.asarray(orders, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`orders` must be real numbers, got {orders!r}.") from err
    if arr.ndim > 1 or arr.size == 0:
        raise ValueError(f"`orders` must be a non-empty scalar or 1-D sequence, got shape {arr.shape}.")
    arr = np.atleast_1d(arr)
    bad = ~(arr > 1.0)  # also catches NaN
    if np.any(bad):
        raise ValueError(f"`orders` must all be > 1, got {arr[bad].tolist()}.")
    return arr


def rdp_subsampled_gaussian(
    sampling_rate: Real, noise_multiplier: Real, orders: Sequence[Real] | np.ndarray | Real
) -> np.ndarray:
    r"""RDP of one step of the Poisson-subsampled Gaussian mechanism at each order.

    Computes ``ε(α) = log(A_α) / (α − 1)`` (module docstring; Mironov, Talwar, Zhang 2019): the exact binomial sum for
    integer ``α`` and the erfc-weighted series for fractional ``α``, in log space. ``q = 0`` gives 0 and ``q = 1`` gives
    ``α / (2σ²)``. The same computation as dp-accounting's ``_compute_rdp_poisson_subsampled_gaussian``.

    **Arguments:**

    - `sampling_rate`: ``q ∈ [0, 1]``, the probability that a record (the privacy unit) is in a step's sample.
    - `noise_multiplier`: ``σ > 0``, the noise standard deviation divided by the clipping norm (L2 sensitivity).
    - `orders`: Rényi orders ``α > 1``, a scalar or a 1-D sequence; integer and fractional orders (``np.inf`` gives
      ``∞``).

    **Returns:**

    A float64 array ``(len(orders),)`` of ``ε(α)`` in nats; ``∞`` where the fractional series did not converge.

    **Raises:**

    `ValueError` if `sampling_rate` is outside ``[0, 1]``, `noise_multiplier` is not positive and finite, or an order
    is not ``> 1``.

    **Example:**

    ```python
    rdp_subsampled_gaussian(1.0, 2.0, [2, 4.5])  # array([0.25, 0.5625]) = α / (2σ²)
    ```

    **References:** Mironov, Talwar, Zhang, "Rényi differential privacy of the sampled Gaussian mechanism", 2019,
    Sec. 3.
    """
    q = _check_probability("sampling_rate", sampling_rate, closed=True)
    sigma = _check_noise_multiplier(noise_multiplier)
    alphas = _check_orders(orders)
    out = np.empty_like(alphas)
    for k, alpha in enumerate(alphas.tolist()):
        if q == 0.0:
            out[k] = 0.0
        elif math.isinf(alpha):
            out[k] = math.inf
        elif q == 1.0:
            out[k] = alpha / (2 * sigma**2)
        elif float(alpha).is_integer():
            out[k] = _log_a_int(q, sigma, int(alpha)) / (alpha - 1)
        else:
            out[k] = _log_a_frac(q, sigma, alpha) / (alpha - 1)
    return out


def rdp_to_epsilon(
    orders: Sequence[Real] | np.ndarray | Real,
    rdp: Sequence[Real] | np.ndarray | Real,
    delta: Real,
    conversion: str = "improved",
) -> tuple[float, float]:
    r"""Converts an RDP curve to ``(ε, δ)``-DP: the smallest ``ε`` over the given orders, and the order attaining it.

    - ``"classic"`` (Mironov 2017, Prop. 3): ``ε = min_α RDP(α) + log(1/δ) / (α − 1)``.
    - ``"improved"`` (Balle et al. 2020, Prop. 12): ``ε = min_α RDP(α) + log(1 − 1/α) − (log δ + log α) / (α − 1)``
      over orders ``α > 1.01``; 0 at an order with ``δ² > 1 − exp(−RDP(α))`` or ``RDP(α) < 0``. This is
      dp-accounting's ``compute_epsilon``, and never larger than the classic value at the same order.

    **Arguments:**

    - `orders`: Rényi orders ``α > 1`` (scalar or 1-D).
    - `rdp`: the RDP ``ε(α)`` at each order (same length; ``∞`` allowed), e.g. ``steps * rdp_subsampled_gaussian(...)``.
    - `delta`: ``δ ∈ (0, 1)``.
    - `conversion`: ``"improved"`` (default) or ``"classic"``.

    **Returns:**

    ``(epsilon, order)``: Python floats; ``epsilon`` is ``∞`` when no order gives a finite bound.

    **Raises:**

    `ValueError` naming the argument: `orders` not all ``> 1``, `rdp` of another length or NaN, `delta` outside
    ``(0, 1)``, an unknown `conversion`.

    **References:** I. Mironov, "Rényi differential privacy", CSF 2017. B. Balle, G. Barthe, M. Gaboardi, J. Hsu,
    T. Sato, "Hypothesis testing interpretations and Rényi differential privacy", AISTATS 2020.
    """
    alphas = _check_orders(orders)
    try:
        r = np.atleast_1d(np.asarray(rdp, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(f"`rdp` must be real numbers, got {rdp!r}.") from err
    if r.shape != alphas.shape:
        raise ValueError(f"`rdp` must have one value per order: shape {r.shape} vs `orders` shape {alphas.shape}.")
    if np.any(np.isnan(r)):
        raise ValueError(f"`rdp` must not contain NaN, got {r.tolist()}.")
    d = _check_probability("delta", delta, closed=False)
    if conversion not in _CONVERSIONS:
        raise ValueError(f"`conversion` must be one of {_CONVERSIONS}, got {conversion!r}.")

    if conversion == "classic":
        eps = r + math.log(1 / d) / (alphas - 1)
    else:
        eps = np.empty_like(r)
        log_d = math.log(d)
        for k, (a, rk) in enumerate(zip(alphas.tolist(), r.tolist())):
            if rk < 0:
                eps[k] = 0.0  # only from numerical error in extreme settings; dp-accounting does the same
            elif d**2 + math.expm1(-rk) > 0:
                eps[k] = 0.0  # δ ≤ sqrt(1 − exp(−KL)) already holds with ε = 0
            elif a > 1.01 and math.isfinite(rk):
                eps[k] = rk + math.log1p(-1 / a) - (log_d + math.log(a)) / (a - 1)
            else:
                eps[k] = math.inf
    best = int(np.argmin(eps))
    return max(0.0, float(eps[best])), float(alphas[best])


def epsilon(
    noise_multiplier: Real,
    sampling_rate: Real,
    steps: Real,
    delta: Real,
    conversion: str = "improved",
    orders: Sequence[Real] | np.ndarray | None = None,
) -> float:
    r"""``ε`` at ``δ`` of DP-SGD: ``steps`` compositions of the Poisson-subsampled Gaussian mechanism.

    ``ε = min_α convert(steps · ε₁(α), δ)`` with ``ε₁`` from :func:`rdp_subsampled_gaussian` and the conversion of
    :func:`rdp_to_epsilon`. With ``N`` records, batch size ``B`` and ``E`` epochs, TF-Privacy's convention is
    ``q = B / N`` and ``steps = int(E · N / B)``.

    **Arguments:**

    - `noise_multiplier`: ``σ > 0``.
    - `sampling_rate`: ``q ∈ [0, 1]``.
    - `steps`: number of steps ``T ≥ 0`` (an integer; an integral float is accepted).
    - `delta`: ``δ ∈ (0, 1)``.
    - `conversion`: ``"improved"`` (default; dp-accounting's ``RdpAccountant.get_epsilon``) or ``"classic"``.
    - `orders`: Rényi orders ``> 1``; default :data:`DEFAULT_RDP_ORDERS` (dp-accounting's).

    **Returns:**

    ``ε`` as a Python float (``∞`` if no order gives a finite bound).

    **Raises:**

    `ValueError` naming the argument (see the functions above; `steps` negative or not an integer).

    **Example:**

    ```python
    epsilon(4.0, 0.01, 10_000, 1e-5, conversion="classic")  # ≈ 1.26 (Abadi et al. 2016)
    ```

    **References:** M. Abadi et al., "Deep learning with differential privacy", CCS 2016; Mironov, Talwar, Zhang 2019.
    """
    if isinstance(steps, bool) or not isinstance(steps, Real):
        raise ValueError(f"`steps` must be a non-negative integer, got {steps!r}.")
    if not isinstance(steps, Integral) and not float(steps).is_integer():
        raise ValueError(f"`steps` must be a non-negative integer, got {steps!r}.")
    if steps < 0:
        raise ValueError(f"`steps` must be a non-negative integer, got {steps!r}.")
    if conversion not in _CONVERSIONS:
        raise ValueError(f"`conversion` must be one of {_CONVERSIONS}, got {conversion!r}.")
    alphas = _check_orders(DEFAULT_RDP_ORDERS if orders is None else orders)
    per_step = rdp_subsampled_gaussian(sampling_rate, noise_multiplier, alphas)
    # zero steps compose to RDP 0 even at an order whose series did not converge (0 · ∞ would be NaN)
    rdp = np.zeros_like(per_step) if int(steps) == 0 else int(steps) * per_step
    return rdp_to_epsilon(alphas, rdp, delta, conversion)[0]
