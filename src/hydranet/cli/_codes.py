"""The exit codes of the ``hydranet`` command, in one place (the parser, the commands and the error
surface use them; docs/config.md lists them and a test checks that the table matches)."""

__all__ = ["EXIT_FAILURE", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_IO", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK = 0  # success
EXIT_FAILURE = 1  # the run failed: training diverged, a damaged checkpoint, data that cannot be used
EXIT_USAGE = 2  # bad usage or a bad config: the message names the key and the fix
EXIT_IO = 3  # the system refused a read or a write: permission denied, disk full, I/O error
EXIT_INTERNAL = 70  # an unexpected error, most likely a bug (EX_SOFTWARE of sysexits.h)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), the shell's convention
