"""`python -m data_prep COMMAND ...`; see `python -m data_prep --help`."""

import signal

if __name__ == "__main__":
    if hasattr(signal, "pthread_sigmask"):  # first: a Ctrl-C waits, pending, until main can answer it
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))  # (progan.signals)
    from progan.cli import run_command

    def load_main():
        from data_prep.cli import main  # numpy, Pillow, lmdb
        return main

    run_command(load_main, "data_prep")
