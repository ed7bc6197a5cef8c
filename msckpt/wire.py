"""Protobuf wire-level walk of a plain MindSpore checkpoint (reference: ckpt-format.md §2-3).

A plain ``.ckpt`` is a concatenation of serialized ``Checkpoint`` messages, each holding one ``Value``.
We decode only keys, varints and the small fields (tag, dims, tensor_type) and record where each
``tensor_content`` lies; content bytes are never read here. Every length is checked against the
message that encloses it before it is used, so a corrupted file fails with the byte offset.
"""

from dataclasses import dataclass, field

from .errors import CheckpointError

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
_MAX_VARINT_BYTES = 10
_MAX_DIMS = 32          # numpy's limit; MindSpore tensors have at most 8
_MAX_SMALL_FIELD = 1 << 20   # a tag or type name longer than 1 MiB is corruption, not a name


@dataclass(slots=True)
class Record:
    """One ``Checkpoint.Value`` record: its tag and where its pieces are."""
    offset: int                 # byte offset of the record's key in the file
    tag: str
    kind: str                   # "tensor" or "maptensor"
    dims: list = field(default_factory=list)
    packed_dims: bool = False
    tensor_type: str = ""
    content_offset: int = 0
    content_len: int = 0
    parts: list = field(default_factory=list)   # maptensor: a Record-like (dims, type, offset, len) per part


class Walker:
    def __init__(self, buf, path, end):
        self.buf = buf          # anything indexable by int and slice: mmap, bytes
        self.path = path
        self.end = end

    def fail(self, what, offset):
        raise CheckpointError(self.path, what, offset)

    def varint(self, pos, limit):
        """Decode a 64-bit varint at pos; returns (value, next pos)."""
        result = 0
        shift = 0
        start = pos
        buf = self.buf
        while True:
            if pos >= limit:
                self.fail("truncated varint", start)
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if pos - start >= _MAX_VARINT_BYTES:
                self.fail("corrupted varint (more than 10 bytes)", start)
        if result >> 64:
            self.fail("corrupted varint (exceeds 64 bits)", start)
        return result, pos

    def key(self, pos, limit):
        start = pos
        key, pos = self.varint(pos, limit)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            self.fail("invalid field number 0", start)
        if wire_type in (SGROUP, EGROUP) or wire_type > I32:
            self.fail(f"unknown wire type {wire_type} (field {number})", start)
        return number, wire_type, pos

    def length(self, pos, limit, what):
        start = pos
        n, pos = self.varint(pos, limit)
        if n > limit - pos:
            self.fail(f"{what} length {n} runs past the end of its message ({limit - pos} bytes left)", start)
        return n, pos

    def skip(self, wire_type, pos, limit):
        if wire_type == VARINT:
            return self.varint(pos, limit)[1]
        if wire_type == LEN:
            n, pos = self.length(pos, limit, "field")
            return pos + n
        size = 8 if wire_type == I64 else 4
        if pos + size > limit:
            self.fail("truncated fixed-size field", pos)
        return pos + size

    def text(self, pos, n, what, encoding="utf-8"):
        if n > _MAX_SMALL_FIELD:
            self.fail(f"{what} of {n} bytes is implausibly long", pos)
        raw = bytes(self.buf[pos:pos + n])
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid {encoding.upper()}", pos)

    def records(self, start=0):
        """Yield every Record from start to self.end, in file order."""
        pos = start
        while pos < self.end:
            rec_start = pos
            number, wire_type, pos = self.key(pos, self.end)
            if number != 1 or wire_type != LEN:
                if rec_start == 0:
                    self.fail("not a MindSpore checkpoint record (expected key 0x0a)", rec_start)
                pos = self.skip(wire_type, pos, self.end)   # unknown top-level field: skip it
                continue
            n, pos = self.length(pos, self.end, "record")
            yield self.value(rec_start, pos, pos + n)
            pos += n

    def value(self, rec_start, pos, end):
        tag = None
        rec = Record(offset=rec_start, tag="", kind="")
        while pos < end:
            number, wire_type, pos = self.key(pos, end)
            if wire_type != LEN or number not in (1, 2, 3):
                pos = self.skip(wire_type, pos, end)
                continue
            n, pos = self.length(pos, end, "field")
            if number == 1:
                tag = self.text(pos, n, "parameter name")
            elif number == 2:
                rec.kind = "tensor"
                self.tensor(rec, pos, pos + n)
            else:
                rec.kind = "maptensor"
                self.maptensor(rec, pos, pos + n)
            pos += n
        if tag is None:
            self.fail("record without a parameter name", rec_start)
        if not rec.kind:
            self.fail(f"record '{tag}' holds no tensor", rec_start)
        rec.tag = tag
        return rec

    def tensor(self, rec, pos, end):
        have_type = False
        while pos < end:
            number, wire_type, pos = self.key(pos, end)
            if number == 1 and wire_type == VARINT:
                if len(rec.dims) >= _MAX_DIMS:
                    self.fail(f"more than {_MAX_DIMS} dimensions", pos)
                dim_pos = pos
                dim, pos = self.varint(pos, end)
                rec.dims.append(self.dim(dim, dim_pos))
            elif number == 1 and wire_type == LEN:     # packed dims: MindSpore never writes them, but legal
                n, pos = self.length(pos, end, "packed dims")
                stop = pos + n
                rec.packed_dims = True
                while pos < stop:
                    if len(rec.dims) >= _MAX_DIMS:
                        self.fail(f"more than {_MAX_DIMS} dimensions", pos)
                    dim_pos = pos
                    dim, pos = self.varint(pos, stop)
                    rec.dims.append(self.dim(dim, dim_pos))
            elif number == 2 and wire_type == LEN:
                n, pos = self.length(pos, end, "tensor_type")
                rec.tensor_type = self.text(pos, n, "tensor_type", "ascii")
                have_type = True
                pos += n
            elif number == 3 and wire_type == LEN:
                n, pos = self.length(pos, end, "tensor_content")
                rec.content_offset, rec.content_len = pos, n
                pos += n
            else:
                pos = self.skip(wire_type, pos, end)
        if not have_type:
            self.fail("tensor without tensor_type", rec.offset)

    def dim(self, value, pos):
        if value >= 1 << 63:
            self.fail(f"negative dimension {value - (1 << 64)}", pos)
        return value

    def maptensor(self, rec, pos, end):
        while pos < end:
            number, wire_type, pos = self.key(pos, end)
            if number == 1 and wire_type == LEN:
                n, pos = self.length(pos, end, "maptensor part")
                part = Record(offset=pos, tag="", kind="tensor")
                self.tensor(part, pos, pos + n)
                rec.parts.append(part)
                pos += n
            else:
                pos = self.skip(wire_type, pos, end)
