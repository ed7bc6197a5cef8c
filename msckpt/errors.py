"""The one error type the reader raises: it names the file, what is wrong and where."""


class CheckpointError(Exception):
    """Bad or unsupported checkpoint input.

    ``str(err)`` is the one-line message the CLI prints: ``<file>: <what> at byte <offset>``.
    """

    def __init__(self, path, what, offset=None):
        self.path = str(path)
        self.what = what
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{self.path}: {what}{where}")
