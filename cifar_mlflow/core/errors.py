"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Input or environment the user must fix; the message names the problem and what to do."""
