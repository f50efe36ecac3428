"""`python -m data_prep COMMAND ...`; see `python -m data_prep --help`."""

if __name__ == "__main__":
    from progan.runtime.signals import hold_stop_signals

    hold_stop_signals()  # first: a Ctrl-C waits, pending, until main can answer it
    from progan.runtime.cli import run_command

    run_command("data_prep.cli", "data_prep")
