"""`python -m progan.metrics METRIC ...`; see `python -m progan.metrics --help`."""

import signal
import sys

if __name__ == "__main__":
    try:
        from progan.metrics.cli import main  # torch: a Ctrl-C can land in its import
    except KeyboardInterrupt:
        print("python -m progan.metrics: interrupted (nothing was written)", file=sys.stderr)
        sys.exit(130)
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # done: a late Ctrl-C during the interpreter's exit changes nothing
    sys.exit(code)
