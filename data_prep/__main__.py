"""`python -m data_prep COMMAND ...`; see `python -m data_prep --help`."""

import sys

if __name__ == "__main__":
    try:
        from data_prep.cli import main  # numpy, Pillow, lmdb: a Ctrl-C can land here
    except KeyboardInterrupt:
        print("data_prep: interrupted (nothing was written)", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
