"""``twinjax.causal``: structural causal models and the ``do`` operator (:mod:`.scm`, :mod:`.intervention`),
counterfactuals by abduction → action → prediction for SCMs and dynamical twins (:func:`counterfactual`,
:mod:`.dynamic`), graphical identification — d-separation, back-door and front-door criteria and their estimators
(:mod:`.graph`, :mod:`.identification`) —, linear gene-network twins for perturbation screens (:mod:`.networks`) and
virtual trials: transport to a target population with positivity diagnostics and subgroup audits (:mod:`.trials`)."""

from . import (
    dynamic as dynamic,
    graph as graph,
    identification as identification,
    intervention as intervention,
    networks as networks,
    scm as scm,
    trials as trials,
)
from .counterfactual import counterfactual as counterfactual
from .dynamic import (
    CounterfactualResult as CounterfactualResult,
    rollout_with_noise as rollout_with_noise,
    twin_counterfactual as twin_counterfactual,
)
from .graph import (
    DAG as DAG,
    backdoor_violation as backdoor_violation,
    d_connecting_path as d_connecting_path,
    d_separated as d_separated,
    find_backdoor_set as find_backdoor_set,
    find_frontdoor_set as find_frontdoor_set,
    frontdoor_violation as frontdoor_violation,
    satisfies_backdoor as satisfies_backdoor,
    satisfies_frontdoor as satisfies_frontdoor,
)
from .identification import (
    Identification as Identification,
    NotIdentifiedError as NotIdentifiedError,
    backdoor_adjustment as backdoor_adjustment,
    estimate_effect as estimate_effect,
    frontdoor_adjustment as frontdoor_adjustment,
    identify as identify,
)
from .intervention import Intervention as Intervention, do as do
from .networks import (
    AbstractGeneNetwork as AbstractGeneNetwork,
    LinearGeneNetwork as LinearGeneNetwork,
    NetworkFit as NetworkFit,
    SaturatingGeneNetwork as SaturatingGeneNetwork,
    Screen as Screen,
    additive_baseline as additive_baseline,
    fit_network as fit_network,
    interacting_pairs as interacting_pairs,
    knockout_masks as knockout_masks,
    perturbation_means as perturbation_means,
    predict_knockouts as predict_knockouts,
    random_interactions as random_interactions,
    reachability as reachability,
    sample_screen as sample_screen,
)
from .scm import (
    SCM as SCM,
    discrete_scm as discrete_scm,
    exact_query as exact_query,
    linear_gaussian_moments as linear_gaussian_moments,
    linear_gaussian_scm as linear_gaussian_scm,
)
from .trials import (
    PositivityReport as PositivityReport,
    TransportedEffect as TransportedEffect,
    positivity_check as positivity_check,
    strata_from_bins as strata_from_bins,
    subgroup_audit as subgroup_audit,
    transport_weights as transport_weights,
    transported_effect as transported_effect,
)
