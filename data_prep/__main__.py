"""`python -m data_prep COMMAND ...`; see `python -m data_prep --help`."""

import sys

from data_prep.cli import main

if __name__ == "__main__":
    sys.exit(main())
