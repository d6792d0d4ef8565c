"""The exit codes of the ``hydranet`` command, in one place (the parser and the commands both use them)."""

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK = 0  # success
EXIT_FAILURE = 1  # a failure while running: the message says what
EXIT_USAGE = 2  # bad usage or a bad config: the message names the key and the fix
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), the shell's convention
