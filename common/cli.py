"""The command-line rule: bad input ends with one sentence on stderr and exit code 2, not a traceback."""

import functools
import sys

USAGE_EXIT = 2


def fail(error) -> int:
    """Prints `error: <message>` on stderr; returns the exit code for bad input."""
    print(f"error: {error}", file=sys.stderr)
    return USAGE_EXIT


def exits_on(*errors: type[BaseException]):
    """Decorates a `main(argv=None) -> int | None`: the given errors become `error: <message>` on stderr
    and exit code 2; None means success (0). Anything else still raises, with its traceback."""

    def decorate(main):
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                code = main(*args, **kwargs)
            except errors as e:
                return fail(e)
            return 0 if code is None else code

        return run

    return decorate
