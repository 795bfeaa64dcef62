"""The base of every error whose message is written for the user.

The command line prints such an error as one message (no traceback) and exits with status 1;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input, config or state that the user can fix; the message says where and what to do."""
