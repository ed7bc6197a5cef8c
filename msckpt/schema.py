"""Message classes for the vendored protobuf schemas, built at run time from compiled descriptors.

No generated ``_pb2`` modules: a serialized FileDescriptorSet works with any protobuf runtime version.
"""

from functools import lru_cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def schema_dir():
    """Where the .proto/.desc files are: msckpt/proto when installed, ./proto in a source checkout."""
    for candidate in (_HERE / "proto", _HERE.parent / "proto"):
        if (candidate / "checkpoint.desc").is_file():
            return candidate
    raise FileNotFoundError("ms2gguf's protobuf schemas (checkpoint.desc) are missing from the installation")


@lru_cache(maxsize=None)
def _pool(stem):
    from google.protobuf import descriptor_pb2, descriptor_pool

    files = descriptor_pb2.FileDescriptorSet.FromString((schema_dir() / f"{stem}.desc").read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


def message_class(stem, full_name):
    """E.g. ``message_class("checkpoint", "Checkpoint")``."""
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(_pool(stem).FindMessageTypeByName(full_name))
