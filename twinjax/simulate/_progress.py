"""A tqdm progress bar driven from inside compiled loops (via ``jax.debug.callback``)."""

import jax
from tqdm.auto import tqdm

_BARS: dict[int, tqdm] = {}


def _update(bar_id, i, total, desc):
    bar_id, i, total = int(bar_id), int(i), int(total)
    bar = _BARS.get(bar_id)
    if bar is None or i == 0:
        if bar is not None:
            bar.close()
        bar = _BARS[bar_id] = tqdm(total=total, desc=desc, leave=False)
    bar.n = i + 1
    bar.refresh()
    if i + 1 >= total:
        bar.close()
        _BARS.pop(bar_id, None)


def tick(i, total: int, desc: str = "simulate", updates: int = 50) -> None:
    """Report step ``i`` of ``total`` about ``updates`` times over the loop (cheap: a host callback per update)."""
    every = max(1, total // updates)
    bar_id = id(desc) % 2**31

    def report():
        jax.debug.callback(lambda k: _update(bar_id, k, total, desc), i)

    jax.lax.cond((i % every == 0) | (i == total - 1), report, lambda: None)
