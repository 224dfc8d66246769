"""`twinjax.causal.graph`: DAG structure, d-separation against brute-force path enumeration and textbook cases, and the
back-door / front-door criteria."""

import itertools

import numpy as np
import pytest

from twinjax.causal.graph import (
    DAG,
    _path_open,
    _paths,
    backdoor_violation,
    d_connecting_path,
    d_separated,
    find_backdoor_set,
    find_frontdoor_set,
    frontdoor_violation,
    satisfies_backdoor,
    satisfies_frontdoor,
)


def random_dag(rng, p, prob):
    names = [f"V{i}" for i in range(p)]
    perm = rng.permutation(p)
    edges = [(names[perm[i]], names[perm[j]]) for i in range(p) for j in range(i + 1, p) if rng.random() < prob]
    return DAG(edges, names)


def brute_force_separated(dag, x, y, z):
    """Independent d-separation: every simple path blocked (the path rule, not the moral graph)."""
    return all(not _path_open(dag, path, set(z)) for path in _paths(dag, x, y))


def test_structure_and_cycles():
    g = DAG([("Z", "X"), ("Z", "Y"), ("X", "Y")], latent=(), bidirected=[("X", "W")], nodes=("X", "Y", "Z", "W"))
    assert g.parents("Y") == ("Z", "X")
    assert g.children("Z") == ("X", "Y")
    assert g.ancestors("Y") == {"X", "Y", "Z", "U[X,W]"}
    assert g.descendants("Z") == {"Z", "X", "Y"}
    assert g.latent == ("U[X,W]",) and "U[X,W]" not in g.observed
    order = g.topological_order()
    for a, b in g.edges:
        assert order.index(a) < order.index(b)
    with pytest.raises(ValueError, match="cycle: a -> b -> c -> a"):
        DAG([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])
    with pytest.raises(ValueError, match="self-loop"):
        DAG([("a", "a")])
    with pytest.raises(ValueError, match="not among nodes"):
        DAG([("a", "b")], nodes=("a",))
    with pytest.raises(ValueError, match="unknown node"):
        g.parents("Q")


@pytest.mark.parametrize(
    "edges, x, y, z, separated",
    [
        ([("A", "B"), ("B", "C")], "A", "C", (), False),  # chain
        ([("A", "B"), ("B", "C")], "A", "C", ("B",), True),
        ([("B", "A"), ("B", "C")], "A", "C", (), False),  # fork
        ([("B", "A"), ("B", "C")], "A", "C", ("B",), True),
        ([("A", "B"), ("C", "B")], "A", "C", (), True),  # collider
        ([("A", "B"), ("C", "B")], "A", "C", ("B",), False),
        ([("A", "B"), ("C", "B"), ("B", "D")], "A", "C", ("D",), False),  # descendant of a collider
        # M-bias: X <- A -> M <- B -> Y; M is a collider
        ([("A", "X"), ("A", "M"), ("B", "M"), ("B", "Y")], "X", "Y", (), True),
        ([("A", "X"), ("A", "M"), ("B", "M"), ("B", "Y")], "X", "Y", ("M",), False),
        ([("A", "X"), ("A", "M"), ("B", "M"), ("B", "Y")], "X", "Y", ("M", "A"), True),
    ],
)
def test_textbook_d_separation(edges, x, y, z, separated):
    g = DAG(edges)
    assert d_separated(g, x, y, z) is separated
    assert brute_force_separated(g, x, y, z) is separated


def test_d_separation_matches_path_enumeration_on_random_dags():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(25):
        g = random_dag(rng, int(rng.integers(3, 6)), 0.5)
        for x, y in itertools.combinations(g.nodes, 2):
            rest = [v for v in g.nodes if v not in (x, y)]
            for k in range(len(rest) + 1):
                for z in itertools.combinations(rest, k):
                    assert d_separated(g, x, y, z) == brute_force_separated(g, x, y, z), (g.edges, x, y, z)
                    checked += 1
    assert checked > 300


def test_backdoor_textbook_cases():
    # butterfly (bow-tie): X <- A -> M <- B -> Y, A -> X, M -> X, M -> Y: M alone opens A-M-B, {M, A} works
    g = DAG([("A", "X"), ("A", "M"), ("B", "M"), ("B", "Y"), ("M", "X"), ("M", "Y"), ("X", "Y")])
    assert not satisfies_backdoor(g, "X", "Y", [])
    assert "open" in backdoor_violation(g, "X", "Y", ["M"])
    assert satisfies_backdoor(g, "X", "Y", ["M", "A"]) and satisfies_backdoor(g, "X", "Y", ["M", "B"])
    assert find_backdoor_set(g, "X", "Y") in {("A", "M"), ("M", "B"), ("B", "M"), ("M", "A")}
    # a descendant of X is never allowed, even a harmless one
    g2 = DAG([("Z", "X"), ("Z", "Y"), ("X", "D"), ("X", "Y")])
    assert "descendants" in backdoor_violation(g2, "X", "Y", ["Z", "D"])
    assert find_backdoor_set(g2, "X", "Y") == ("Z",)
    # hidden confounder: no back-door set exists; the message names the open path through the latent node
    g3 = DAG([("X", "M"), ("M", "Y")], bidirected=[("X", "Y")])
    assert find_backdoor_set(g3, "X", "Y") is None
    assert "X <- U[X,Y] -> Y" in backdoor_violation(g3, "X", "Y", [])
    assert "latent" in backdoor_violation(g3, "X", "Y", ["U[X,Y]"])


def test_frontdoor_criterion():
    g = DAG([("X", "M"), ("M", "Y")], bidirected=[("X", "Y")])
    assert satisfies_frontdoor(g, "X", "Y", ["M"])
    assert find_frontdoor_set(g, "X", "Y") == ("M",)
    # (i) a direct edge X -> Y is not intercepted
    g_i = DAG([("X", "M"), ("M", "Y"), ("X", "Y")], bidirected=[("X", "Y")])
    assert frontdoor_violation(g_i, "X", "Y", ["M"]).startswith("(i)")
    # (ii) a confounder of X and M
    g_ii = DAG([("X", "M"), ("M", "Y")], bidirected=[("X", "Y"), ("X", "M")])
    assert frontdoor_violation(g_ii, "X", "Y", ["M"]).startswith("(ii)")
    # (iii) a confounder of M and Y
    g_iii = DAG([("X", "M"), ("M", "Y")], bidirected=[("X", "Y"), ("M", "Y")])
    why = frontdoor_violation(g_iii, "X", "Y", ["M"])
    assert why.startswith("(iii)") and "M <- U[M,Y] -> Y" in why
    assert find_frontdoor_set(g_iii, "X", "Y") is None


def test_backdoor_agrees_with_path_definition_on_random_dags():
    """satisfies_backdoor (moral-graph d-separation in G minus X's out-arrows) equals the definition by paths: no
    descendant of X in Z and every path starting with an arrow into X blocked by Z."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        g = random_dag(rng, 6, 0.4)
        x, y = g.nodes[0], g.nodes[-1]
        rest = [v for v in g.nodes if v not in (x, y)]
        for k in range(len(rest) + 1):
            for z in itertools.combinations(rest, k):
                by_paths = not (set(z) & g.descendants(x)) and d_connecting_path(g, x, y, z, True) is None
                assert satisfies_backdoor(g, x, y, z) == by_paths, (g.edges, z)
