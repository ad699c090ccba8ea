"""The one error type for user mistakes: the CLI prints its message on one line, never a traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a parameter, a model name); the message says what and where."""
