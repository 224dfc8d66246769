"""``twinjax.generative``: generative twins — normalizing flows, VAEs with physics (diffrax) decoders, GANs and
CycleGAN, score-based diffusion — behind one contract (:class:`AbstractGenerativeModel`: ``sample``, ``log_prob``
where explicit, ``loss``), one training loop (:func:`train`) and one set of sample metrics (:func:`mmd`,
:func:`energy_distance`).
"""

from . import datasets as datasets, matching as matching, metrics as metrics, posterior as posterior
from ._base import AbstractAdversarial as AbstractAdversarial, AbstractGenerativeModel as AbstractGenerativeModel
from .matching import MatchingResult as MatchingResult, distribution_matching as distribution_matching
from .metrics import energy_distance as energy_distance, mmd as mmd
from .nnx import NNXAdapter as NNXAdapter, from_nnx as from_nnx
from .posterior import GenerativePosterior as GenerativePosterior, posterior_sample as posterior_sample
from .training import TrainResult as TrainResult, TrainState as TrainState, init as init, step as step, train as train
