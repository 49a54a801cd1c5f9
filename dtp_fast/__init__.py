"""dtp_fast: Difference Target Propagation with L-DRL feedback training, fast."""
__version__ = "0.1.0"

from .blocks import Block, DTPNet, UnsupportedLayerError, conv_block, from_sequential, linear_block
from .noise import CounterNoise, ExplicitNoise, NoiseSource
from .feedback import FeedbackConfig, FeedbackState, available_backends, train_feedback
from .presets import PRESETS, get_preset, lenet, mlp, simple_vgg
from .diagnostics import gradient_alignment, weight_alignment
from .data import Dataset, Loader, load_dataset
from .trainer import NonFiniteLossError, TrainConfig, Trainer
from .wrapper import DTP
from .api import make_run, train
