"""`python -m data_prep COMMAND ...`; see `python -m data_prep --help`."""

import signal
import sys

if __name__ == "__main__":
    try:
        from data_prep.cli import main  # numpy, Pillow, lmdb: a Ctrl-C can land here
    except KeyboardInterrupt:
        print("data_prep: interrupted (nothing was written)", file=sys.stderr)
        sys.exit(130)
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # done: a late Ctrl-C during the interpreter's exit changes nothing
    sys.exit(code)
