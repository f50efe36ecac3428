"""`python -m progan.metrics METRIC ...`; see `python -m progan.metrics --help`."""

import signal

if __name__ == "__main__":
    if hasattr(signal, "pthread_sigmask"):  # first: a Ctrl-C waits, pending, until main can answer it
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))  # (progan.signals)
    from progan.cli import run_command

    def load_main():
        from progan.metrics.cli import main  # torch
        return main

    run_command(load_main, "python -m progan.metrics")
