"""Random-DAG audit of back-door / front-door estimates of causal effects against the SCM's own interventions.

Four families of structural causal models, ``n_dags`` random members each:

* ``linear_backdoor``: random DAGs on ``n_nodes`` nodes (edge probability ``edge_prob``), ``n_latent`` of them hidden,
  linear-Gaussian mechanisms with weights ``±U(0.5, 1.5)`` and noise sd ``U(0.5, 1.5)``;
* ``binary_backdoor``: the same graphs with binary variables, ``P(V=1 | pa) ~ U(0.1, 0.9)`` per parent configuration;
* ``linear_frontdoor`` / ``binary_frontdoor``: ``X → M → Y`` with a hidden confounder ``U → X, U → Y`` (random
  parameters), identified only by the front-door criterion.

The query is the average treatment effect ``ATE = E[Y | do(X=1)] − E[Y | do(X=0)]`` for a random observed ``X`` and a
random observed descendant ``Y`` (a confounded pair — some back-door path open — whenever the graph has one). Truth
comes from the SCM's own ``do``: the linear-Gaussian closed form (`linear_gaussian_moments`) and exact enumeration of
the intervened binary SCM (`exact_query`). For every query
`identify` either returns a smallest back-door (or front-door) set — then the adjustment estimator runs on
observational samples of each size in ``sample_sizes`` — or declares the query not identified, which is checked
independently by enumerating every candidate set's back-door paths. The naive contrast (difference of conditional
means, or the OLS slope of ``Y`` on ``X``) shows the confounding bias. A bootstrap standard error (``n_boot``
resamples) puts each error on the scale of sampling error. Reported: mean / median / 95th percentile of the absolute
errors per family, estimator and sample size; the fraction of errors within 2 bootstrap SE; the ratio of median
errors between the two sample sizes (``√(n₂/n₁)`` expected); the sprinkler reference value
``P(W=1 | do(S=1), R=1) = 0.99``.
"""

import dataclasses
import itertools
import pathlib
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from twinjax.causal.graph import DAG, d_connecting_path, satisfies_backdoor
from twinjax.causal.identification import NotIdentifiedError, backdoor_adjustment, frontdoor_adjustment, identify
from twinjax.causal.intervention import do
from twinjax.causal.scm import discrete_scm, exact_query, linear_gaussian_moments, linear_gaussian_scm
from twinjax.runs import write_json

SUMMARY_KEYS = ("table", "identification", "rate", "sprinkler", "wall_time_s")
FAMILIES = ("linear_backdoor", "binary_backdoor", "linear_frontdoor", "binary_frontdoor")
SHORT = dict(zip(FAMILIES, ("lin BD", "bin BD", "lin FD", "bin FD")))


@dataclasses.dataclass(frozen=True)
class Config:
    n_dags: int = 200  # random SCMs per family
    n_nodes: int = 7
    edge_prob: float = 0.4
    n_latent: int = 2
    sample_sizes: tuple[int, ...] = (2000, 32000)
    n_boot: int = 10
    n_sprinkler: int = 200_000
    seed: int = 0

    def __post_init__(self):
        for name in ("n_dags", "n_boot", "n_sprinkler"):
            if getattr(self, name) < 2:
                raise ValueError(f"`{name}` must be >= 2, got {getattr(self, name)}.")
        if self.n_nodes < 3:
            raise ValueError(f"`n_nodes` must be >= 3, got {self.n_nodes}.")
        if not 0 < self.edge_prob <= 1:
            raise ValueError(f"`edge_prob` must be in (0, 1], got {self.edge_prob}.")
        if not 0 <= self.n_latent <= self.n_nodes - 2:
            raise ValueError(f"`n_latent` must be in [0, n_nodes - 2], got {self.n_latent}.")
        if len(self.sample_sizes) != 2 or not 100 <= self.sample_sizes[0] < self.sample_sizes[1]:
            raise ValueError(f"`sample_sizes` must be two increasing sizes >= 100, got {self.sample_sizes}.")

    @classmethod
    def quick(cls) -> "Config":
        return cls(n_dags=4, sample_sizes=(1000, 16000), n_boot=4, n_sprinkler=50_000)


def _random_graph(rng: np.random.Generator, config: Config):
    """A random DAG with hidden nodes and a query (X, Y): Y an observed proper descendant of an observed X, chosen
    among the confounded pairs (some back-door path open given nothing) when there are any."""
    p = config.n_nodes
    names = [f"V{i}" for i in range(p)]
    while True:
        weights = np.zeros((p, p))
        for i, j in itertools.combinations(range(p), 2):
            if rng.random() < config.edge_prob:
                weights[i, j] = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5)
        perm = rng.permutation(p)  # relabel so that the topological order is not the name order
        weights = weights[np.ix_(perm, perm)]
        latent = tuple(names[i] for i in rng.choice(p, config.n_latent, replace=False))
        dag = DAG([(names[i], names[j]) for i in range(p) for j in range(p) if weights[i, j]], names, latent)
        pairs = [(x, y) for x in dag.observed for y in dag.observed if y != x and y in dag.descendants(x)]
        confounded = [(x, y) for x, y in pairs if not satisfies_backdoor(dag, x, y, ())]
        pairs = confounded or pairs  # a confounded query when the graph has one
        if pairs:
            x, y = pairs[rng.integers(len(pairs))]
            return names, weights, dag, x, y


def _binary_tables(rng: np.random.Generator, dag: DAG) -> dict:
    cpts = {}
    for v in dag.nodes:
        pa = dag.parents(v)
        p1 = rng.uniform(0.1, 0.9, size=(2,) * len(pa))
        cpts[v] = (pa, np.stack([1 - p1, p1], axis=-1))
    return cpts


def _frontdoor_linear(rng: np.random.Generator):
    names = ("U", "X", "M", "Y")
    w = np.zeros((4, 4))
    for i, j in ((0, 1), (0, 3), (1, 2), (2, 3)):
        w[i, j] = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5)
    return names, w


def _frontdoor_binary(rng: np.random.Generator) -> dict:
    def row(shape):
        p1 = rng.uniform(0.1, 0.9, size=shape)
        return np.stack([1 - p1, p1], axis=-1)

    return {"U": ((), row(())), "X": (("U",), row((2,))), "M": (("X",), row((2,))), "Y": (("U", "M"), row((2, 2)))}


def _verify_not_backdoor_identified(dag: DAG, x: str, y: str) -> bool:
    """Brute force, independent of the moral-graph d-separation: every candidate set of observed non-descendants of X
    leaves some path into X open (by explicit path enumeration)."""
    pool = [v for v in dag.observed if v not in dag.descendants(x) and v != y]
    for k in range(len(pool) + 1):
        for z in itertools.combinations(pool, k):
            if d_connecting_path(dag, x, y, z, first_edge_into=True) is None:
                return False
    return True


def _naive(data: dict, x: str, y: str, kind: str) -> float:
    xs, ys = np.asarray(data[x]), np.asarray(data[y])
    if kind == "linear":
        return float(np.polyfit(xs, ys, 1)[0])
    return float(ys[xs == 1].mean() - ys[xs == 0].mean())


def _ate(estimator, data: dict, x: str, y: str, adj: tuple, kind: str) -> float:
    return float(estimator(data, x, y, adj, 1.0, kind) - estimator(data, x, y, adj, 0.0, kind))


def _bootstrap_se(rng: np.random.Generator, fn, data: dict, n_boot: int) -> float:
    n = len(next(iter(data.values())))
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            values.append(fn({k: v[idx] for k, v in data.items()}))
        except ValueError:  # a resample without some stratum (positivity): skip it
            continue
    return float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")


def _audit_one(scm, dag, x, y, truth, kind, criterion, key, rng, config):
    """Estimate the ATE at each sample size; returns per-estimator records or None when not identified."""
    try:
        ident = identify(dag, x, y, criterion)
    except NotIdentifiedError:
        return None
    estimator = backdoor_adjustment if criterion == "backdoor" else frontdoor_adjustment
    out = {"adjustment": list(ident.adjustment), "truth": truth}
    keys = jax.random.split(key, len(config.sample_sizes))
    for n, k in zip(config.sample_sizes, keys):
        full = jax.device_get(scm.sample(k, n))
        data = {v: np.asarray(full[v]) for v in scm.observed}
        rec = {}
        try:
            est = _ate(estimator, data, x, y, ident.adjustment, kind)
            se = _bootstrap_se(rng, lambda d: _ate(estimator, d, x, y, ident.adjustment, kind), data, config.n_boot)
            rec["adjusted"] = {"estimate": est, "error": est - truth, "se": se}
        except ValueError:  # positivity fails in the sample
            rec["adjusted"] = None
        naive = _naive(data, x, y, kind)
        naive_se = _bootstrap_se(rng, lambda d: _naive(d, x, y, kind), data, config.n_boot)
        rec["naive"] = {"estimate": naive, "error": naive - truth, "se": naive_se}
        out[str(n)] = rec
    return out


def _sprinkler(key, n: int) -> dict:
    scm = discrete_scm(
        {
            "C": ((), [0.5, 0.5]),
            "S": (("C",), [[0.5, 0.5], [0.9, 0.1]]),
            "R": (("C",), [[0.8, 0.2], [0.2, 0.8]]),
            "W": (("S", "R"), [[[1.0, 0.0], [0.1, 0.9]], [[0.1, 0.9], [0.01, 0.99]]]),
        }
    )
    exact = exact_query(scm, {"W": 1}, {"R": 1}, do(S=1))
    data = jax.device_get(scm.sample(key, n, do(S=1)))
    w = np.asarray(data["W"])[np.asarray(data["R"]) == 1]
    mc = float(w.mean())
    se = float(np.sqrt(mc * (1 - mc) / w.size))
    return {"exact": exact, "exact_error": abs(exact - 0.99), "monte_carlo": mc, "mc_se": se,
            "mc_error_in_se": abs(mc - 0.99) / se}  # fmt: skip


def evaluate(config: Config, key: jax.Array) -> dict:
    """Run the audit (Python loops over random graphs; not jittable: the graph searches are symbolic)."""
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    k_sprinkler, key = jax.random.split(key)
    records = {f: [] for f in FAMILIES}
    declared = {f: {"not_identified": 0, "verified": 0} for f in FAMILIES}
    for _ in tqdm(range(config.n_dags), desc="random SCMs", leave=False):
        key, k1, k2, k3, k4 = jax.random.split(key, 5)
        names, w, dag, x, y = _random_graph(rng, config)
        sd = rng.uniform(0.5, 1.5, config.n_nodes)
        lin = linear_gaussian_scm(w, sd, names, latent=dag.latent)
        truth = float(
            linear_gaussian_moments(w, sd, names, intervention={x: 1.0})[0][names.index(y)]
            - linear_gaussian_moments(w, sd, names, intervention={x: 0.0})[0][names.index(y)]
        )
        bins = discrete_scm(_binary_tables(rng, dag), latent=dag.latent)
        truth_b = exact_query(bins, {y: 1}, None, {x: 1}) - exact_query(bins, {y: 1}, None, {x: 0})
        for fam, scm, t, kind, k in (("linear_backdoor", lin, truth, "linear", k1),
                                     ("binary_backdoor", bins, truth_b, "discrete", k2)):  # fmt: skip
            rec = _audit_one(scm, dag, x, y, t, kind, "backdoor", k, rng, config)
            if rec is None:
                declared[fam]["not_identified"] += 1
                declared[fam]["verified"] += int(_verify_not_backdoor_identified(dag, x, y))
            else:
                records[fam].append(rec)
        # front-door families: the back-door criterion must fail, the front-door one must hold
        fd_names, fd_w = _frontdoor_linear(rng)
        fd_sd = rng.uniform(0.5, 1.5, 4)
        fd_lin = linear_gaussian_scm(fd_w, fd_sd, fd_names, latent=("U",))
        fd_truth = float(fd_w[1, 2] * fd_w[2, 3])
        fd_bin = discrete_scm(_frontdoor_binary(rng), latent=("U",))
        fd_truth_b = exact_query(fd_bin, {"Y": 1}, None, {"X": 1}) - exact_query(fd_bin, {"Y": 1}, None, {"X": 0})
        for fam, scm, t, kind, k in (("linear_frontdoor", fd_lin, fd_truth, "linear", k3),
                                     ("binary_frontdoor", fd_bin, fd_truth_b, "discrete", k4)):  # fmt: skip
            if _audit_one(scm, scm.graph, "X", "Y", t, kind, "backdoor", k, rng, config) is None:
                declared[fam]["not_identified"] += 1
                declared[fam]["verified"] += int(_verify_not_backdoor_identified(scm.graph, "X", "Y"))
            rec = _audit_one(scm, scm.graph, "X", "Y", t, kind, "frontdoor", k, rng, config)
            if rec is not None:
                records[fam].append(rec)
    return {"records": records, "declared": declared, "sprinkler": _sprinkler(k_sprinkler, config.n_sprinkler)}


def _stats(errors: np.ndarray) -> dict:
    a = np.abs(errors)
    return {"mean_abs": float(a.mean()), "median_abs": float(np.median(a)), "p95_abs": float(np.quantile(a, 0.95)),
            "rmse": float(np.sqrt(np.mean(a**2)))}  # fmt: skip


def _table_rows(recs: list, sizes: tuple) -> dict:
    rows_out = {"n_queries": len(recs)}
    for est in ("adjusted", "naive"):
        for n in sizes:
            rows = [r[n][est] for r in recs if r[n][est] is not None]
            if not rows:
                continue
            err = np.array([r["error"] for r in rows])
            se = np.array([r["se"] for r in rows])
            ok = np.isfinite(se) & (se > 0)
            stats = _stats(err)
            stats["n"] = len(rows)
            stats["mean_error"] = float(err.mean())  # bias check: compare with its standard error
            stats["mean_error_se"] = float(err.std(ddof=1) / np.sqrt(len(err))) if len(err) > 1 else None
            stats["mean_z2"] = float(np.mean((err[ok] / se[ok]) ** 2)) if ok.any() else None
            stats["within_2se"] = float(np.mean(np.abs(err[ok]) <= 2 * se[ok])) if ok.any() else None
            stats["median_abs_z"] = float(np.median(np.abs(err[ok]) / se[ok])) if ok.any() else None
            rows_out[f"{est}_n{n}"] = stats
    return rows_out


def summarise(out: dict, config: Config) -> dict:
    """Error table per family, estimator and sample size (all identified queries, and the confounded ones);
    identification counts; the convergence-rate check."""
    table, rate = {}, {}
    n1, n2 = (str(n) for n in config.sample_sizes)
    for fam, recs in out["records"].items():
        table[fam] = _table_rows(recs, (n1, n2))
        # confounded: the empty set is not a back-door set (every front-door query has its hidden confounder)
        table[fam]["confounded"] = _table_rows([r for r in recs if r["adjustment"]], (n1, n2))
        if f"adjusted_n{n1}" in table[fam] and f"adjusted_n{n2}" in table[fam]:
            small, large = table[fam][f"adjusted_n{n1}"], table[fam][f"adjusted_n{n2}"]
            rate[fam] = {
                "median_ratio": small["median_abs"] / large["median_abs"],
                "rmse_ratio": small["rmse"] / large["rmse"],
                "expected": float(np.sqrt(int(n2) / int(n1))),
            }
    return {"table": table, "identification": out["declared"], "rate": rate, "sprinkler": out["sprinkler"]}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(out: dict, config: Config, path: pathlib.Path) -> None:
    """Left: absolute ATE errors per family (adjusted at both sizes, naive at the larger). Right: estimate vs truth."""
    plt = _pyplot()
    n1, n2 = (str(n) for n in config.sample_sizes)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    data, labels, colors = [], [], []
    for fam in FAMILIES:
        recs = out["records"][fam]
        for est, n, c in (("adjusted", n1, "C0"), ("adjusted", n2, "C2"), ("naive", n2, "C3")):
            errs = [abs(r[n][est]["error"]) for r in recs if r[n][est] is not None]
            data.append(np.maximum(errs, 1e-6) if errs else [np.nan])
            labels.append(f"{SHORT[fam]} {est} n={n}")
            colors.append(c)
    box = ax1.boxplot(data, patch_artist=True, showfliers=True, flierprops={"markersize": 2})
    for patch, c in zip(box["boxes"], colors):
        patch.set_facecolor(c)
        patch.set_alpha(0.6)
    ax1.set_xticks(range(1, len(labels) + 1), labels, fontsize=7, rotation=60, ha="right")
    ax1.set_yscale("log")
    ax1.set_ylabel("|ATE estimate − truth|")
    ax1.set_title("ATE errors on random SCMs (blue/green: adjusted, red: naive)")
    for m, fam in zip("os^v", FAMILIES):
        recs = out["records"][fam]
        t = [r["truth"] for r in recs if r[n2]["adjusted"] is not None]
        e = [r[n2]["adjusted"]["estimate"] for r in recs if r[n2]["adjusted"] is not None]
        ax2.scatter(
            t, e, s=10, marker=m, color="C0", alpha=0.6, label="adjusted (all families)" if fam == FAMILIES[0] else None
        )
        ax2.scatter([r["truth"] for r in recs], [r[n2]["naive"]["estimate"] for r in recs], s=10, marker=m,
                    color="C3", alpha=0.4, label=f"naive ({fam})")  # fmt: skip
    lim = ax2.get_xlim()
    ax2.plot(lim, lim, "k-", lw=0.8)
    ax2.set_xlabel("true ATE (SCM do: closed form / exact enumeration)")
    ax2.set_ylabel(f"estimate from n={n2} observational samples")
    ax2.set_title("estimate vs truth (marker: family)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: Config, run_dir: pathlib.Path) -> dict:
    start = time.perf_counter()
    with jax.enable_x64(True):
        out = evaluate(config, jax.random.key(config.seed))
    results = summarise(out, config)
    results["wall_time_s"] = time.perf_counter() - start
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    _figure(out, config, fig_dir / "identification_errors.png")
    write_json(run_dir / "results.json", results)
    write_json(run_dir / "records.json", out["records"])
    return results
