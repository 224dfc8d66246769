"""``twinjax.generative``: generative twins — normalizing flows, VAEs with physics (diffrax) decoders, GANs and
CycleGAN, score-based diffusion — behind one contract (:class:`AbstractGenerativeModel`: ``sample``, ``log_prob``
where explicit, ``loss``), one training loop (:func:`train`) and one set of sample metrics (:func:`mmd`,
:func:`energy_distance`).
"""

from . import (
    datasets as datasets,
    diffusion as diffusion,
    flows as flows,
    gan as gan,
    matching as matching,
    metrics as metrics,
    posterior as posterior,
    vae as vae,
)
from ._base import AbstractAdversarial as AbstractAdversarial, AbstractGenerativeModel as AbstractGenerativeModel
from .diffusion import (
    VESDE as VESDE,
    VPSDE as VPSDE,
    AbstractSDE as AbstractSDE,
    PosteriorScore as PosteriorScore,
    ScoreDiffusion as ScoreDiffusion,
    ScoreNet as ScoreNet,
    impute as impute,
    posterior_score as posterior_score,
    sample_posterior as sample_posterior,
)
from .flows import CouplingFlow as CouplingFlow
from .gan import (
    ConditionalGAN as ConditionalGAN,
    CycleGAN as CycleGAN,
    TranslatedSensor as TranslatedSensor,
    gradient_penalty as gradient_penalty,
)
from .matching import MatchingResult as MatchingResult, distribution_matching as distribution_matching
from .metrics import energy_distance as energy_distance, mmd as mmd
from .nnx import NNXAdapter as NNXAdapter, from_nnx as from_nnx
from .posterior import GenerativePosterior as GenerativePosterior, posterior_sample as posterior_sample
from .training import TrainResult as TrainResult, TrainState as TrainState, init as init, step as step, train as train
from .vae import (
    VAE as VAE,
    AbstractDecoder as AbstractDecoder,
    HybridDecoder as HybridDecoder,
    NeuralDecoder as NeuralDecoder,
    PhysicsDecoder as PhysicsDecoder,
    PhysicsVAE as PhysicsVAE,
    gaussian_kl as gaussian_kl,
)
