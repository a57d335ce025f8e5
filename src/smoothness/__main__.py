"""`python -m smoothness` (and the `smoothness` script): the command line, with Ctrl-C and SIGTERM
handled from the first moment, including the seconds in which PyTorch is imported."""
import os
import sys

from smoothness.errors import SmoothnessError
from smoothness.runtime import interrupt


def main(argv=None) -> int:
    """The `smoothness` console command: signal handling first, then the CLI (cli.main); returns the exit code."""
    interrupt.install(defer=True)   # during the imports a signal is only noted (interrupt.py says why)
    try:
        from smoothness.cli.commands import main as cli_main
        interrupt.install()   # from here on a signal raises (not restored: the process ends after main)
        noted = interrupt.pending()
        if noted:
            raise noted
        status = cli_main(argv)
        interrupt.check()   # a signal whose exception was swallowed
        interrupt.finishing()   # from here a signal ends the process quietly (atexit callbacks run next)
    except KeyboardInterrupt as e:   # before the command; cli_main reports its own
        status = interrupt.report(e)
    except SmoothnessError as e:   # while importing: a measure module of $SMOOTHNESS_MEASURES that fails
        print(f"smoothness: error: {e}", file=sys.stderr)
        status = 2
    if interrupt.reported is not None or interrupt.threads_left:
        # Exit now with 130/143. A Ctrl-C that arrived while an extension ran Python code during an import
        # leaves CPython's "unhandled KeyboardInterrupt" flag set even though it was handled, and a normal
        # exit would then kill the process with SIGINT instead of returning the status. A thread left running
        # in native code (interrupt.leave_thread_behind) could make the interpreter's finalization abort.
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
