"""clutils: small, tested building blocks for the continual-learning book.

One module per idea: ``consolidation`` (the quadratic penalty), ``ewc`` (chapter 2), ``mas``
(chapter 3), ``selfless`` (chapter 4), ``si`` (chapter 5), ``replay`` (chapter 6), on top of ``datasets``, ``streams``,
``models``, ``strategies``, ``training`` (the loop), ``runs`` (a run's fingerprint, cache and
checkpoints) and the per-sample gradient engine ``per_sample``.
"""
from ._version import __version__

from .book import choose_profile, glue
from .datasets import Dataset, from_tensors, from_torchvision, load_dataset
from .streams import Stream, Task, disjoint, make_stream, permuted, split
from .metrics import average_accuracy, backward_transfer, forgetting, forward_transfer, intransigence, summary
from .models import CNN, MLP, ContinualModel, check_model
from .strategies import Compose, FreezeFeatures, Joint, Naive, Strategy
from .consolidation import L2, Consolidation, quadratic_penalty
from .ewc import EWC, fisher_diagonal
from .si import SI
from .replay import Replay
from .mas import MAS, hebbian_importance, mas_importance
from .selfless import (SSL, active_neurons, coactivation, decov, gaussian_neighbourhood, importance_discount, l1_rep,
                       mean_activation, neuron_importance, slni, sni)
from .plotting import plot_accuracy_matrix, plot_task_curves, plot_training_curves
from .results import CacheError, RunResult
from .baselines import count_parameters, memory_cost, separate_models
from .sweeps import RunFailure, RunSpec, best_value, run_many, run_seeds, sweep, sweep_table
from . import stats, toy, tuning
from .training import NonFiniteLossError, TrainConfig, evaluate, freeze_batchnorm, resolve_device, seed_everything, train_step, train_tasks
from .runs import FINGERPRINT_VERSION, train_stream
