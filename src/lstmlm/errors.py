"""The one exception type users see: a one-line message naming the file or argument and what is wrong.

The library speaks of its arguments (`top_k must be positive, got 0`), which is what a Python caller and the
HTTP API's fields call them; the CLI prints `lstmlm: error: <message>` with that argument written as its flag
(`--top-k must be positive, got 0`) and exits with status 2, never a traceback.
"""


class LstmlmError(Exception):
    """A user-facing error (bad file, bad argument, incomplete run directory).

    Args:
        message: one line.
        argument: the argument (or config field) the message starts with, if it starts with one.

    Example:
        >>> error = LstmlmError("top_k must be positive, got 0", argument="top_k")
        >>> str(error), error.for_command_line()
        ('top_k must be positive, got 0', '--top-k must be positive, got 0')
    """

    def __init__(self, message, argument=None):
        super().__init__(message)
        self.argument = argument

    def for_command_line(self):
        """The message with its leading argument written as the command line's flag (top_k -> --top-k)."""
        text = str(self)
        if self.argument and text.startswith(self.argument):
            return "--" + self.argument.replace("_", "-") + text[len(self.argument):]
        return text
