"""The training loop, evaluation, pre-training, the run directory and the continual sequence of requests."""

from gslora.engine.compare import CompareConfig, compare
from gslora.engine.continual import ForgetConfig, read_manifest, resume_config, run_forgetting
from gslora.engine.evaluate import Predictions, predict
from gslora.engine.loop import ProgressFactory, train_request
from gslora.engine.pretrain import pretrain, run_pretraining

__all__ = ["CompareConfig", "ForgetConfig", "Predictions", "ProgressFactory", "compare", "predict", "pretrain",
           "read_manifest", "resume_config", "run_forgetting", "run_pretraining", "train_request"]
