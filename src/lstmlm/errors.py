"""The one exception type users see: a one-line message naming the file or argument and what is wrong.

The CLI prints `lstmlm: error: <message>` and exits with status 2, never a traceback.
"""


class LstmlmError(Exception):
    """A user-facing error (bad file, bad argument, incomplete run directory)."""
