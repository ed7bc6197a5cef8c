"""The bytes of an open checkpoint: a read-only memory map plus the file descriptor behind it."""

import mmap
import os


_BLOCK = 64 << 10      # indexing reads headers through a cache of one block this size
_SPARE_FILES = 64      # descriptors left for everything else when many checkpoint files are open


def ensure_open_files(count):
    """Raise the soft limit on open files (up to the hard one) so ``count`` checkpoint files can stay open: a job
    of many ranks saves a file per rank, more than the usual soft limit of 1024."""
    try:
        import resource
    except ImportError:          # not on Unix: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + _SPARE_FILES
    if soft != resource.RLIM_INFINITY and want > soft:
        new = want if hard == resource.RLIM_INFINITY else min(max(want, 2 * soft), hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass                 # the open itself will then report the limit


class Source:
    """A file opened for reading.

    Indexing (``source[i]``, ``source[a:b]``) and streaming (``read_into``, ``chunks``) use positioned
    reads: touching a memory map would make the kernel map in (and read ahead) tensor pages around every
    record header, and those pages count as the process's memory. ``view()`` gives zero-copy
    memoryviews of a memory map for numpy callers that ask for them; ``fileno()`` lets writers copy byte
    ranges in the kernel (``os.copy_file_range``) instead of pulling them through Python.
    """

    def __init__(self, path, fileobj=None):
        self.path = str(path)
        if fileobj is None:
            from .safeio import open_regular      # a FIFO or device would block or never end
            fileobj = open_regular(path, what="checkpoint")
        self._file = fileobj
        self.size = os.fstat(self._file.fileno()).st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        self._block_start, self._block = -1, b""

    def fileno(self):
        return self._file.fileno()

    def view(self, offset, length):
        return memoryview(self._map)[offset:offset + length]

    def read_into(self, offset, buffer):
        """Fill a writable buffer from the file at ``offset`` (positioned reads; the map is not touched)."""
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            n = os.preadv(self.fileno(), [view[done:]], offset + done)
            if n <= 0:
                raise OSError(f"{self.path}: unexpected end of file at byte {offset + done}")
            done += n

    def chunks(self, offset, length, size=16 << 20):
        """Yield the bytes [offset, offset+length) in pieces of at most ``size`` (a reused buffer)."""
        buffer = bytearray(min(size, length))
        end = offset + length
        while offset < end:
            view = memoryview(buffer)[:min(size, end - offset)]
            self.read_into(offset, view)
            yield view
            offset += len(view)

    def __getitem__(self, index):
        """A byte (int) or a slice (bytes) of the file, like indexing ``bytes``."""
        if isinstance(index, slice):
            start, stop, _ = index.indices(self.size)
            if stop <= start:
                return b""
            if self._block_start <= start and stop <= self._block_start + len(self._block):
                return self._block[start - self._block_start:stop - self._block_start]
            return os.pread(self.fileno(), stop - start, start)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError("file index out of range")
        if not self._block_start <= index < self._block_start + len(self._block):
            self._block_start = index - index % _BLOCK
            self._block = os.pread(self.fileno(), _BLOCK, self._block_start)
        return self._block[index - self._block_start]

    def advise_sequential(self, offset, length):
        """Hint that a byte range is about to be read once, front to back (larger kernel readahead)."""
        if hasattr(os, "posix_fadvise") and length:
            try:
                os.posix_fadvise(self.fileno(), offset, length, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass

    def close(self):
        if isinstance(self._map, mmap.mmap):
            try:
                self._map.close()
            except BufferError:
                pass    # numpy views still alive: the map closes when the last of them goes
            self._map = b""
        self._file.close()
