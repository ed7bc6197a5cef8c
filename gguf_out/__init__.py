"""Turn MindSpore checkpoints into GGUF: maps, transforms, vocabulary, quantization, writing, the CLI.

``from gguf_out import convert`` is the Python API (gguf_out/api.py), imported on first use so that
``import gguf_out`` stays cheap; ``gguf_out.ConvertError`` is what it raises.
"""

from .errors import ConvertError

__all__ = ["ConvertError", "convert"]


def __getattr__(name):
    if name == "convert":
        from .api import convert
        return convert
    raise AttributeError(f"module 'gguf_out' has no attribute '{name}'")
