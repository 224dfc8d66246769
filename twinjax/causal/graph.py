"""Directed acyclic graphs with hidden variables, d-separation, and the back-door / front-door criteria.

A `DAG` is a small immutable graph over named nodes. Hidden (latent) variables are explicit nodes listed in
``latent``: they take part in d-separation but can never be conditioned on or adjusted for. A bidirected edge
``X <-> Y`` (an unobserved common cause) is written ``DAG(edges, bidirected=[("X", "Y")])`` and becomes a latent node
``"U[X,Y]"`` with arrows into ``X`` and ``Y``.

d-separation uses the moralised ancestral graph (Lauritzen et al. 1990): ``X ⫫ Y | Z`` iff ``X`` and ``Y`` are
disconnected in the moral graph of ``An(X ∪ Y ∪ Z)`` after deleting ``Z``. `d_connecting_path` finds an open path by
explicit path enumeration (exponential, for small graphs and error messages) — the independent brute force that the
tests compare d-separation against.

**References:** Pearl, *Causality* (2009), §1.2.3 (d-separation), §3.3.1 (back-door), §3.3.2 (front-door).
"""

import itertools
from collections.abc import Iterable, Sequence

import equinox as eqx

__all__ = [
    "DAG",
    "d_connecting_path",
    "d_separated",
    "find_backdoor_set",
    "find_frontdoor_set",
    "backdoor_violation",
    "frontdoor_violation",
    "satisfies_backdoor",
    "satisfies_frontdoor",
]


def _names(arg: str | Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(arg, str):
        return (arg,)
    out = tuple(arg)
    for n in out:
        if not isinstance(n, str):
            raise TypeError(f"{what}: node names must be strings, got {n!r}")
    return out


class DAG(eqx.Module):
    """An immutable directed acyclic graph with optional hidden nodes.

    **Arguments:**

    - `edges`: pairs ``(parent, child)``.
    - `nodes`: all node names in a fixed order (isolated nodes must be listed here); default: the order in which the
      edges name them.
    - `latent`: names of hidden nodes (sampled by a model but never observed or adjusted for).
    - `bidirected`: pairs ``(a, b)`` with a hidden common cause; each becomes a latent node ``"U[a,b]"``.

    **Raises:** `ValueError` for a self-loop, an edge or latent name not among `nodes`, a duplicated node, or a
    directed cycle (the message lists the cycle).

    **Example:**

    ```python
    g = DAG([("Z", "X"), ("Z", "Y"), ("X", "Y")])
    g.parents("Y")  # ('Z', 'X')
    ```
    """

    nodes: tuple[str, ...] = eqx.field(static=True)
    edges: tuple[tuple[str, str], ...] = eqx.field(static=True)
    latent: tuple[str, ...] = eqx.field(static=True)

    def __init__(
        self,
        edges: Iterable[tuple[str, str]] = (),
        nodes: Sequence[str] | None = None,
        latent: Iterable[str] = (),
        bidirected: Iterable[tuple[str, str]] = (),
    ):
        edges = [tuple(e) for e in edges]
        for e in edges:
            if len(e) != 2 or not all(isinstance(v, str) for v in e):
                raise ValueError(f"DAG: each edge must be a pair of node names, got {e!r}")
            if e[0] == e[1]:
                raise ValueError(f"DAG: self-loop {e[0]!r} -> {e[1]!r} is a cycle")
        latent = list(_names(latent, "DAG latent"))
        if nodes is None:
            order: list[str] = []
            for e in edges:
                for v in e:
                    if v not in order:
                        order.append(v)
        else:
            order = list(_names(nodes, "DAG nodes"))
            if len(set(order)) != len(order):
                raise ValueError(f"DAG: nodes contain duplicates: {order}")
            for e in edges:
                for v in e:
                    if v not in order:
                        raise ValueError(f"DAG: edge {e!r} names {v!r}, which is not among nodes {tuple(order)}")
        for a, b in bidirected:
            for v in (a, b):
                if v not in order:
                    raise ValueError(f"DAG: bidirected edge ({a!r}, {b!r}) names unknown node {v!r}")
            u = f"U[{a},{b}]"
            order.append(u)
            latent.append(u)
            edges += [(u, a), (u, b)]
        for v in latent:
            if v not in order:
                raise ValueError(f"DAG: latent node {v!r} is not among nodes {tuple(order)}")
        self.nodes = tuple(order)
        self.edges = tuple(dict.fromkeys(edges))
        self.latent = tuple(dict.fromkeys(latent))
        self.topological_order()  # raises on a cycle

    def _check(self, *names: str) -> None:
        for n in names:
            if n not in self.nodes:
                raise ValueError(f"DAG: unknown node {n!r}; nodes are {self.nodes}")

    @property
    def observed(self) -> tuple[str, ...]:
        """The nodes that are not latent, in node order."""
        return tuple(v for v in self.nodes if v not in self.latent)

    def parents(self, v: str) -> tuple[str, ...]:
        """The parents of `v`, in edge order."""
        self._check(v)
        return tuple(a for a, b in self.edges if b == v)

    def children(self, v: str) -> tuple[str, ...]:
        """The children of `v`, in edge order."""
        self._check(v)
        return tuple(b for a, b in self.edges if a == v)

    def ancestors(self, vs: str | Iterable[str]) -> frozenset[str]:
        """The ancestors of the node(s) `vs`, the nodes themselves included."""
        return self._closure(_names(vs, "ancestors"), self.parents)

    def descendants(self, vs: str | Iterable[str]) -> frozenset[str]:
        """The descendants of the node(s) `vs`, the nodes themselves included."""
        return self._closure(_names(vs, "descendants"), self.children)

    def _closure(self, start, step) -> frozenset[str]:
        self._check(*start)
        seen, stack = set(start), list(start)
        while stack:
            for w in step(stack.pop()):
                if w not in seen:
                    seen.add(w)
                    stack.append(w)
        return frozenset(seen)

    def topological_order(self) -> tuple[str, ...]:
        """The nodes in a topological order (parents first; ties in node order).

        **Raises:** `ValueError` naming a directed cycle when the graph has one.
        """
        indeg = {v: 0 for v in self.nodes}
        for _, b in self.edges:
            indeg[b] += 1
        ready = [v for v in self.nodes if indeg[v] == 0]
        out = []
        while ready:
            v = ready.pop(0)
            out.append(v)
            for a, b in self.edges:
                if a == v:
                    indeg[b] -= 1
                    if indeg[b] == 0:
                        ready.append(b)
        if len(out) < len(self.nodes):
            raise ValueError(f"DAG: the edges contain a directed cycle: {' -> '.join(self._find_cycle(set(out)))}")
        return tuple(out)

    def _find_cycle(self, acyclic: set[str]) -> list[str]:
        rest = [v for v in self.nodes if v not in acyclic]
        succ = {v: [b for a, b in self.edges if a == v and b not in acyclic] for v in rest}
        path, v = [], rest[0]
        while v not in path:  # every remaining node has a remaining successor: walk until a repeat
            path.append(v)
            v = succ[v][0]
        return path[path.index(v) :] + [v]

    def remove_outgoing(self, vs: str | Iterable[str]) -> "DAG":
        """The graph with the arrows out of `vs` deleted (``G_{\\underline{X}}``)."""
        vs = set(_names(vs, "remove_outgoing"))
        return DAG([e for e in self.edges if e[0] not in vs], self.nodes, self.latent)

    def remove_incoming(self, vs: str | Iterable[str]) -> "DAG":
        """The graph with the arrows into `vs` deleted (``G_{\\overline{X}}``, graph surgery for ``do``)."""
        vs = set(_names(vs, "remove_incoming"))
        return DAG([e for e in self.edges if e[1] not in vs], self.nodes, self.latent)


def _sets(dag: DAG, *groups) -> list[set[str]]:
    out = []
    for what, g in groups:
        s = set(_names(g, what))
        dag._check(*s)
        out.append(s)
    return out


def d_separated(dag: DAG, xs: str | Iterable[str], ys: str | Iterable[str], zs: str | Iterable[str] = ()) -> bool:
    """Whether `xs` and `ys` are d-separated by `zs` in `dag`.

    Moralised ancestral graph: restrict to ``An(X ∪ Y ∪ Z)``, marry the parents of every node, drop directions,
    delete ``Z``; d-separated iff no undirected path joins ``X`` and ``Y``.

    **Arguments:**

    - `dag`: the graph.
    - `xs`, `ys`, `zs`: node names (a single name or an iterable); `xs` and `ys` must be disjoint from `zs`.

    **Returns:** a Python bool.
    """
    x, y, z = _sets(dag, ("d_separated xs", xs), ("d_separated ys", ys), ("d_separated zs", zs))
    if (x | y) & z:
        raise ValueError(f"d_separated: xs and ys must not overlap zs; overlap {sorted((x | y) & z)}")
    if x & y:
        return False
    anc = dag.ancestors(x | y | z)
    nbr: dict[str, set[str]] = {v: set() for v in anc}
    for v in anc:
        pa = [p for p in dag.parents(v)]
        for p in pa:
            nbr[p].add(v)
            nbr[v].add(p)
        for p, q in itertools.combinations(pa, 2):
            nbr[p].add(q)
            nbr[q].add(p)
    seen, stack = set(x), list(x)
    while stack:
        for w in nbr[stack.pop()]:
            if w in z or w in seen:
                continue
            if w in y:
                return False
            seen.add(w)
            stack.append(w)
    return True


def _paths(dag: DAG, a: str, b: str):
    """All simple paths between `a` and `b` in the skeleton (brute force)."""
    nbr = {v: set() for v in dag.nodes}
    for p, c in dag.edges:
        nbr[p].add(c)
        nbr[c].add(p)

    def walk(path):
        if path[-1] == b:
            yield tuple(path)
            return
        for w in sorted(nbr[path[-1]]):
            if w not in path:
                yield from walk(path + [w])

    yield from walk([a])


def _path_open(dag: DAG, path: tuple[str, ...], z: set[str]) -> bool:
    edges = set(dag.edges)
    for i in range(1, len(path) - 1):
        prev, v, nxt = path[i - 1], path[i], path[i + 1]
        collider = (prev, v) in edges and (nxt, v) in edges
        if collider:
            if not (dag.descendants(v) & z):
                return False
        elif v in z:
            return False
    return True


def _fmt_path(dag: DAG, path: tuple[str, ...]) -> str:
    edges = set(dag.edges)
    out = path[0]
    for a, b in zip(path[:-1], path[1:]):
        out += f" -> {b}" if (a, b) in edges else f" <- {b}"
    return out


def d_connecting_path(
    dag: DAG, x: str, y: str, zs: str | Iterable[str] = (), first_edge_into: bool = False
) -> tuple[str, ...] | None:
    """An open (d-connecting) path between `x` and `y` given `zs`, found by enumerating simple paths; ``None`` if all
    are blocked. With `first_edge_into`, only paths starting with an arrow into `x` (back-door paths) are considered.

    Exponential in the worst case: for small graphs, tests and error messages.
    """
    (z,) = _sets(dag, ("d_connecting_path zs", zs))
    dag._check(x, y)
    edges = set(dag.edges)
    for path in _paths(dag, x, y):
        if first_edge_into and (path[1], x) not in edges:
            continue
        if _path_open(dag, path, z):
            return path
    return None


def backdoor_violation(dag: DAG, x: str, y: str, zs: str | Iterable[str]) -> str | None:
    """Why `zs` fails the back-door criterion for the effect of `x` on `y` (a message), or ``None`` if it satisfies it.

    The criterion: no node of ``Z`` is a descendant of ``X`` and ``Z`` blocks every path between ``X`` and ``Y`` that
    starts with an arrow into ``X`` (equivalently, ``X ⫫ Y | Z`` in the graph with the arrows out of ``X`` removed).
    ``Z`` must also be observed.
    """
    (z,) = _sets(dag, ("backdoor zs", zs))
    dag._check(x, y)
    if x == y:
        raise ValueError(f"backdoor: x and y must differ, both are {x!r}")
    if {x, y} & z:
        return f"the adjustment set {sorted(z)} contains the treatment or the outcome"
    hidden = z & set(dag.latent)
    if hidden:
        return f"the adjustment set contains latent node(s) {sorted(hidden)}, which cannot be measured"
    desc = (dag.descendants(x) - {x}) & z
    if desc:
        return f"{sorted(desc)} in the adjustment set are descendants of {x!r}"
    if not d_separated(dag.remove_outgoing(x), x, y, z):
        path = d_connecting_path(dag, x, y, z, first_edge_into=True)
        shown = _fmt_path(dag, path) if path is not None else "(path not enumerated)"
        return f"the back-door path {shown} is open given {sorted(z)}"
    return None


def satisfies_backdoor(dag: DAG, x: str, y: str, zs: str | Iterable[str]) -> bool:
    """Whether `zs` satisfies the back-door criterion relative to ``(x, y)`` (see `backdoor_violation`)."""
    return backdoor_violation(dag, x, y, zs) is None


def frontdoor_violation(dag: DAG, x: str, y: str, ms: str | Iterable[str]) -> str | None:
    """Why `ms` fails the front-door criterion for the effect of `x` on `y` (a message), or ``None``.

    The criterion (Pearl 2009, Def. 3.3.3), with ``M`` observed: (i) ``M`` intercepts every directed path from ``X`` to
    ``Y``; (ii) no back-door path from ``X`` to ``M`` is open (given nothing); (iii) every back-door path from ``M`` to
    ``Y`` is blocked by ``X``.
    """
    (m,) = _sets(dag, ("frontdoor ms", ms))
    dag._check(x, y)
    if x == y:
        raise ValueError(f"frontdoor: x and y must differ, both are {x!r}")
    if not m:
        return "the front-door set is empty"
    if {x, y} & m:
        return f"the front-door set {sorted(m)} contains the treatment or the outcome"
    hidden = m & set(dag.latent)
    if hidden:
        return f"the front-door set contains latent node(s) {sorted(hidden)}, which cannot be measured"
    # (i): without M, no directed path from X reaches Y
    cut = DAG([e for e in dag.edges if e[0] not in m and e[1] not in m], dag.nodes, dag.latent)
    if y in cut.descendants(x):
        return f"(i) the directed paths from {x!r} to {y!r} are not all intercepted by {sorted(m)}"
    no_out_x = dag.remove_outgoing(x)
    for v in sorted(m):
        if not d_separated(no_out_x, x, v):
            path = d_connecting_path(dag, x, v, (), first_edge_into=True)
            shown = _fmt_path(dag, path) if path is not None else ""
            return f"(ii) the back-door path {shown} from {x!r} to {v!r} is open"
    if not d_separated(dag.remove_outgoing(m), m, y, x):
        for v in sorted(m):
            path = d_connecting_path(dag.remove_outgoing(m - {v}), v, y, x, first_edge_into=True)
            if path is not None:
                return f"(iii) the back-door path {_fmt_path(dag, path)} from {v!r} to {y!r} is not blocked by {x!r}"
        return f"(iii) a back-door path from {sorted(m)} to {y!r} is not blocked by {x!r}"
    return None


def satisfies_frontdoor(dag: DAG, x: str, y: str, ms: str | Iterable[str]) -> bool:
    """Whether `ms` satisfies the front-door criterion relative to ``(x, y)`` (see `frontdoor_violation`)."""
    return frontdoor_violation(dag, x, y, ms) is None


def _candidates(dag: DAG, exclude: frozenset[str] | set[str]) -> list[str]:
    return [v for v in dag.observed if v not in exclude]


def find_backdoor_set(dag: DAG, x: str, y: str, max_size: int | None = None) -> tuple[str, ...] | None:
    """A smallest observed set satisfying the back-door criterion for ``(x, y)``, or ``None`` if there is none.

    Tries the parents of `x` first when they are all observed and valid (but keeps searching for a smaller set), then
    all subsets of the observed non-descendants of `x` in increasing size (exhaustive: ``None`` means no back-door
    set exists among the observed nodes, up to `max_size`).
    """
    dag._check(x, y)
    pool = _candidates(dag, dag.descendants(x) | {y})
    top = len(pool) if max_size is None else min(max_size, len(pool))
    for k in range(top + 1):
        for z in itertools.combinations(pool, k):
            if satisfies_backdoor(dag, x, y, z):
                return z
    return None


def find_frontdoor_set(dag: DAG, x: str, y: str, max_size: int | None = None) -> tuple[str, ...] | None:
    """A smallest observed set satisfying the front-door criterion for ``(x, y)``, or ``None`` (exhaustive search)."""
    dag._check(x, y)
    pool = _candidates(dag, {x, y})
    top = len(pool) if max_size is None else min(max_size, len(pool))
    for k in range(1, top + 1):
        for m in itertools.combinations(pool, k):
            if satisfies_frontdoor(dag, x, y, m):
                return m
    return None
