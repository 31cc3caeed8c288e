"""The one exception type for user errors: caught at the CLI, printed as one line."""


class AvakitError(Exception):
    """A problem with the user's input (path, option, file content), not a bug.

    `exit_code` is what the CLI exits with: 2 for bad paths and options (the Unix usage
    convention), 1 for a check that ran and found a problem.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):  # noqa: ANN204 - keeps exit_code across processes (shard workers)
        return (self.__class__, (str(self), self.exit_code))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in a command that knows what it kept and how to go on; the message says both.

    A KeyboardInterrupt, so library callers that stop on Ctrl-C still do; the CLI prints the
    message and exits 130.
    """


EXIT_REQUEUE = 75  # sysexits EX_TEMPFAIL, "try again later": a preempted run; the sbatch template requeues


class Preempted(AvakitError):
    """SIGTERM/SIGUSR1 stopped training; last.pt holds the start of the interrupted epoch.

    The CLI exits EXIT_REQUEUE (75) with the one line that says how to go on.
    """

    def __init__(self, message: str, exit_code: int = EXIT_REQUEUE) -> None:
        super().__init__(message, exit_code)
