"""The bytes of an open checkpoint: a read-only memory map plus the file descriptor behind it."""

import mmap
import os


class Source:
    """A file opened for reading through a memory map.

    ``fileno()`` lets writers copy byte ranges in the kernel (``os.copy_file_range``) instead of
    pulling them through Python; ``view()`` gives zero-copy memoryviews for numpy.
    """

    def __init__(self, path, fileobj=None):
        self.path = str(path)
        self._file = fileobj if fileobj is not None else open(path, "rb")
        self.size = os.fstat(self._file.fileno()).st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""

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

    def __getitem__(self, index):
        return self._map[index]

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
