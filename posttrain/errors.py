"""The base of every error whose message is written for the user.

The command line prints such an error as one message (no traceback; ``posttrain --debug`` shows it)
and exits with status 2; anything else is a bug: it keeps its traceback and exits with status 1.
"""


class UserError(Exception):
    """Bad input, config or state that the user can fix; the message says where and what to do."""


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on; the message says why and what to try."""
