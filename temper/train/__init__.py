"""The train worker: FSDP2 actor, reference and critic over Hugging Face causal LMs.

Each class is built per rank inside an initialized torch.distributed process group (gloo on CPU,
NCCL on GPU) and receives the whole `RolloutBatch` on every rank; the ranks split it among
themselves (packing.py). The trainer never imports the engine: it meets it through weight buckets
(HF names, full tensors) and HF folders.
"""

from temper.train.actor import Actor
from temper.train.checkpoint import Resumed
from temper.train.critic import Critic
from temper.train.hf_export import convert_checkpoint_to_hf
from temper.train.lr_schedule import LRSchedule, LRScheduler
from temper.train.reference import ReferenceModel
from temper.train.train_data import TrainData

__all__ = [
    "Actor",
    "Critic",
    "LRSchedule",
    "LRScheduler",
    "ReferenceModel",
    "Resumed",
    "TrainData",
    "convert_checkpoint_to_hf",
]
