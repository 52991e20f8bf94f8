"""clutils: small, tested building blocks for the continual-learning book."""
from .book import choose_profile, glue
from .data import Dataset, Stream, Task, disjoint, load_dataset, make_stream, permuted, split
from .metrics import average_accuracy, backward_transfer, forgetting, forward_transfer, intransigence, summary
from .importance import fisher_diagonal, hebbian_importance, mas_importance, neuron_importance
from .inhibition import SSL
from .models import MLP
from .plotting import plot_accuracy_matrix, plot_task_curves, plot_training_curves
from .penalties import EWC, L2, MAS, Consolidation, quadratic_penalty
from .results import RunResult
from .strategies import Compose, FreezeFeatures, Joint, Naive, Strategy
from . import toy
from .training import NonFiniteLossError, TrainConfig, evaluate, resolve_device, seed_everything, train_stream

__version__ = "0.1.0"
