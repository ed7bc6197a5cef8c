"""Open a MindSpore checkpoint of any kind and expose its tensors (sniffing order: ckpt-format.md §10)."""

import os
import zlib

from . import encryption, plain, safetensors
from .errors import CheckpointError
from .source import Source

_CRC_CHUNK = 16 << 20


class Checkpoint:
    """An open checkpoint: ``tensors`` in file order, plus facts about the file.

    Use as a context manager; tensors read after ``close()`` are invalid.
    """

    def __init__(self, path, source, fmt, tensors, *, encrypted=None, crc=None, data_end=None, metadata=None,
                 sources=()):
        self.path = str(path)
        self.source = source                # the one file of a single-file checkpoint (None for directories)
        self.sources = [source] if source is not None else list(sources)   # every open file, closed together
        self.format = fmt                   # "ckpt", "safetensors" or "empty"
        self.tensors = tensors
        self.encrypted = encrypted          # None or the mode, e.g. "AES-GCM"
        self.crc = crc                      # stored CRC-32 (ckpt trailer / safetensors metadata) or None
        self.metadata = metadata or {}      # safetensors __metadata__
        self._data_end = data_end
        self._by_name = {}
        for t in tensors:
            self._by_name.setdefault(t.name, t)

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self):
        return len(self.tensors)

    def __contains__(self, name):
        return name in self._by_name

    def __getitem__(self, name):
        return self._by_name[name]

    def get(self, name, default=None):
        return self._by_name.get(name, default)

    def names(self):
        return [t.name for t in self.tensors]

    @property
    def file_size(self):
        """Bytes on disk (an encrypted file's own size, not its decrypted copy's; all files of a directory)."""
        if os.path.isfile(self.path):
            return os.path.getsize(self.path)
        return sum(s.size for s in self.sources)

    def computed_crc(self):
        """CRC-32 as MindSpore computes it for this format, or None when the format has no CRC."""
        if self.format == "ckpt":
            crc = 0
            for chunk in self.source.chunks(0, self._data_end, _CRC_CHUNK):
                crc = zlib.crc32(chunk, crc)
            return crc
        if self.format == "safetensors":
            # chained over (name bytes, tensor bytes) in sorted name order (ckpt-format.md §9.1)
            crc = 0
            for t in sorted(self.tensors, key=lambda t: t.name):
                crc = zlib.crc32(t.name.encode(), crc)
                for off, n in t.byte_ranges():
                    for chunk in t.source.chunks(off, n, _CRC_CHUNK):
                        crc = zlib.crc32(chunk, crc)
            return crc
        return None

    def verify_crc(self):
        """Raise CheckpointError if a stored CRC does not match; returns True if checked, False if none stored."""
        if self.crc is None:
            return False
        actual = self.computed_crc()
        if actual != self.crc:
            raise CheckpointError(self.path, f"CRC mismatch: the file stores {self.crc} (0x{self.crc:08x}) "
                                  f"but its content gives {actual} (0x{actual:08x})")
        return True

    def close(self):
        for source in self.sources:
            source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_checkpoint(path, dec_key=None, dec_mode="AES-GCM", verify_crc=False, tmp_dir=None, **options):
    """Open a ``.ckpt`` (plain, CRC-trailed or encrypted) or ``.safetensors`` file and index it.

    Only headers are read; tensor bytes stay on disk until asked for. Raises CheckpointError.
    ``options`` go to directory checkpoints (distributed: ``strategy=``, ``step=``).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        from .directory import open_directory
        return open_directory(path, dec_key=dec_key, dec_mode=dec_mode, verify_crc=verify_crc, tmp_dir=tmp_dir,
                              **options)
    if options:
        raise CheckpointError(path, f"is a single file; {', '.join(sorted(options))} only apply to a directory "
                              "of rank_*/ shards")
    try:
        source = Source(path)
    except OSError as err:
        raise CheckpointError(path, f"cannot open: {err.strerror or err}") from None
    try:
        ckpt = _open(path, source, dec_key, dec_mode, tmp_dir)
        if verify_crc:
            ckpt.verify_crc()
        return ckpt
    except BaseException:
        source.close()
        raise


def _open(path, source, dec_key, dec_mode, tmp_dir):
    if source.size == 0:
        # every tensor saved was zero-size: MindSpore writes nothing at all (ckpt-format.md §6.6)
        return Checkpoint(path, source, "empty", [], data_end=0)

    mode = encryption.mode_of(source[0:4])
    if mode is not None:
        if dec_key is None:
            raise CheckpointError(path, f"file is encrypted ({mode}); pass --dec-key HEX "
                                  f"(and --dec-mode {mode})")
        decrypted = encryption.decrypt_to_tempfile(source, dec_key, dec_mode, tmp_dir)
        source.close()
        inner = Source(path, decrypted)
        try:
            ckpt = _open_plain(path, inner)
        except CheckpointError as err:
            inner.close()
            raise CheckpointError(path, f"after decryption: {err.what}", err.offset) from None
        ckpt.encrypted = mode
        return ckpt

    if safetensors.looks_like(source):
        tensors, meta = safetensors.index(source)
        crc = meta.get("crc_num")
        crc = int(crc) if isinstance(crc, str) and crc.isascii() and crc.isdigit() and len(crc) <= 20 else None
        return Checkpoint(path, source, "safetensors", tensors, crc=crc, metadata=meta)

    if source[0:1] == b"\x0a":
        return _open_plain(path, source)

    if source[0:1] == b"\x08":
        raise CheckpointError(path, "looks like a parallel strategy file, not a checkpoint", 0)
    raise CheckpointError(path, "not a MindSpore checkpoint (unknown first byte "
                          f"0x{source[0]:02x}; expected 0x0a, a safetensors header or an encryption magic)", 0)


def _open_plain(path, source):
    crc = plain.crc_trailer(source)
    end = source.size - plain.CRC_TRAILER if crc is not None else source.size
    if end == 0:
        return Checkpoint(path, source, "empty", [], crc=crc, data_end=0)
    tensors = plain.index(source, end)
    return Checkpoint(path, source, "ckpt", tensors, crc=crc, data_end=end)
