"""Read MindSpore checkpoints (.ckpt, encrypted .ckpt, .safetensors) without MindSpore.

    with msckpt.open_checkpoint("model.ckpt") as ckpt:
        for tensor in ckpt:            # file order; only headers have been read
            array = tensor.array()     # zero-copy numpy view when stored in one record
"""

from .checkpoint import Checkpoint, open_checkpoint
from .dtypes import DTYPES, DType
from .errors import CheckpointError
from .tensor import Tensor

__all__ = ["Checkpoint", "CheckpointError", "DTYPES", "DType", "Tensor", "open_checkpoint"]
