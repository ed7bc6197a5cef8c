"""Streaming GGUF v3 writer (format: gguf-targets.md §1).

Phases are explicit and enforced, like gguf-py's writer: header, metadata and every tensor's info are
written first (so the whole plan must be known up front), then each tensor's bytes in declaration order.
Tensor bytes arrive either as buffers (transformed data) or as byte ranges of another file, which are
copied by the kernel (``os.copy_file_range``) without passing through Python.
"""

import os
import struct

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GGUFValueType

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<?",
}
_COPY_CHUNK = 1 << 30


class KV:
    """A typed metadata value; GGUF readers (llama.cpp, Ollama) insist on exact types."""

    def __init__(self, vtype, value, item_type=None):
        self.vtype, self.value, self.item_type = vtype, value, item_type

    @classmethod
    def u32(cls, v):
        return cls(GGUFValueType.UINT32, int(v))

    @classmethod
    def i32(cls, v):
        return cls(GGUFValueType.INT32, int(v))

    @classmethod
    def f32(cls, v):
        return cls(GGUFValueType.FLOAT32, float(v))

    @classmethod
    def bool(cls, v):
        return cls(GGUFValueType.BOOL, bool(v))

    @classmethod
    def str(cls, v):
        return cls(GGUFValueType.STRING, str(v))

    @classmethod
    def array(cls, item_type, values):
        return cls(GGUFValueType.ARRAY, list(values), item_type)

    def encode(self):
        return _encode_value(self.vtype, self.value, self.item_type)


def _string(text):
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _encode_value(vtype, value, item_type=None):
    if vtype == GGUFValueType.STRING:
        return _string(value)
    if vtype == GGUFValueType.ARRAY:
        head = struct.pack("<IQ", item_type, len(value))
        if item_type == GGUFValueType.STRING:
            return head + b"".join(_string(v) for v in value)
        fmt = _SCALAR_FORMATS[item_type]
        return head + np.asarray(value, dtype=np.dtype(fmt)).tobytes()
    return struct.pack(_SCALAR_FORMATS[vtype], value)


class TensorInfo:
    def __init__(self, name, shape, ggml_type):
        self.name = name
        self.shape = tuple(int(d) for d in shape)      # numpy order; written reversed (ne0 = last)
        self.ggml_type = ggml_type
        block, size = GGML_QUANT_SIZES[ggml_type]
        if self.shape and self.shape[-1] % block:
            raise ValueError(f"{name}: row length {self.shape[-1]} is not a multiple of {block}")
        n = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        self.nbytes = n // block * size
        self.offset = 0


def _pad(n, alignment):
    return (n + alignment - 1) // alignment * alignment


class GGUFWriter:
    """Writes one GGUF file to an open binary file object, in three enforced phases."""

    def __init__(self, fileobj, alignment=GGUF_DEFAULT_ALIGNMENT):
        self.f = fileobj
        self.alignment = alignment
        self.state = "new"
        self.infos = []
        self._next = 0
        self._current = None
        self._written = 0
        self._data_start = 0

    def write_header(self, metadata, infos):
        """metadata: list of (key, KV); infos: TensorInfo list in data order."""
        if self.state != "new":
            raise RuntimeError("header already written")
        keys = [k for k, _ in metadata]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate metadata keys")
        names = [i.name for i in infos]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names")
        out = [struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(infos), len(metadata))]
        for key, kv in metadata:
            out.append(_string(key) + struct.pack("<I", kv.vtype) + kv.encode())
        offset = 0
        for info in infos:
            info.offset = offset
            dims = info.shape[::-1] or (1,)
            out.append(_string(info.name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, info.ggml_type,
                                                        offset))
            offset += _pad(info.nbytes, self.alignment)
        header = b"".join(out)
        self.f.write(header)
        self.f.write(b"\0" * (_pad(len(header), self.alignment) - len(header)))
        self._data_start = _pad(len(header), self.alignment)
        self.infos = infos
        self.state = "data"
        return self._data_start + offset      # final file size

    def begin_tensor(self, name):
        if self.state != "data" or self._current is not None:
            raise RuntimeError("begin_tensor out of order")
        info = self.infos[self._next]
        if info.name != name:
            raise RuntimeError(f"tensor {name} written out of order (expected {info.name})")
        self._current, self._written = info, 0

    def write(self, data):
        n = memoryview(data).nbytes
        self._account(n)
        self.f.write(data)

    def copy_range(self, src_fd, offset, length):
        """Copy bytes [offset, offset+length) of another file into the current tensor, in the kernel."""
        self._account(length)
        self.f.flush()
        dst_fd = self.f.fileno()
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(_COPY_CHUNK, length - done), offset + done)
            except OSError:
                n = 0
            if n <= 0:      # not supported here (e.g. across filesystems on old kernels): plain copy
                n = _fallback_copy(src_fd, dst_fd, offset + done, length - done)
            done += n
        self.f.seek(0, os.SEEK_END)

    def _account(self, n):
        if self._current is None:
            raise RuntimeError("write outside a tensor")
        self._written += n
        if self._written > self._current.nbytes:
            raise RuntimeError(f"{self._current.name}: more bytes than declared ({self._current.nbytes})")

    def end_tensor(self):
        info = self._current
        if self._written != info.nbytes:
            raise RuntimeError(f"{info.name}: wrote {self._written} bytes, declared {info.nbytes}")
        padding = _pad(info.nbytes, self.alignment) - info.nbytes
        if padding:     # gguf-py pads after every tensor, the last one included
            self.f.write(b"\0" * padding)
        self._current = None
        self._next += 1
        if self._next == len(self.infos):
            self.state = "done"

    def finish(self):
        if self.state != "done" and self.infos:
            raise RuntimeError(f"only {self._next} of {len(self.infos)} tensors written")
        self.f.flush()


def _fallback_copy(src_fd, dst_fd, offset, length):
    chunk = os.pread(src_fd, min(length, 64 << 20), offset)
    if not chunk:
        raise OSError("unexpected end of source file")
    os.write(dst_fd, chunk)
    return len(chunk)
