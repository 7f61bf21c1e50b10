"""One exception type for problems the user can fix; the CLI prints it as a single line."""


class RecoverLMError(Exception):
    """Bad input or configuration. The message names the problem and is shown without a traceback."""
