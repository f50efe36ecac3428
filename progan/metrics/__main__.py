"""`python -m progan.metrics METRIC ...`; see `python -m progan.metrics --help`."""

if __name__ == "__main__":
    from progan.runtime.signals import hold_stop_signals

    hold_stop_signals()  # first: a Ctrl-C waits, pending, until main can answer it
    from progan.runtime.cli import run_command

    run_command("progan.metrics.cli", "python -m progan.metrics")
