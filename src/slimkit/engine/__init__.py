"""Training engine: fit, evaluate, hooks, resume, data-parallel scale-out.

Imports torch; `import slimkit` alone does not load this package.
"""

from slimkit.engine.checkpoint import CHECKPOINT_FILE, load_state_file
from slimkit.engine.config import TrainConfig
from slimkit.engine.evaluate import evaluate
from slimkit.engine.fit import FitResult, TrainData, TrainingDivergedError, device_of, fit
from slimkit.engine.hooks import EveryStep, Hook, TrainState
from slimkit.engine.outputs import METRICS_FILE
from slimkit.engine.progress import LOG_FILE

__all__ = ["fit", "evaluate", "TrainConfig", "FitResult", "TrainData", "Hook", "EveryStep", "TrainState",
           "TrainingDivergedError", "device_of", "load_state_file", "CHECKPOINT_FILE", "METRICS_FILE", "LOG_FILE"]
