"""``twinjax.causal``: structural causal models, interventions (``do``), counterfactuals (abduction → action →
prediction) for SCMs and dynamical twins, identification (back-door, front-door), perturbation screens and virtual
trials."""

from . import intervention as intervention
from .intervention import Intervention as Intervention, do as do
