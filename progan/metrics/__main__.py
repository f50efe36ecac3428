"""`python -m progan.metrics METRIC ...`; see `python -m progan.metrics --help`."""

if __name__ == "__main__":
    from progan.cli import run_command

    def load_main():
        from progan.metrics.cli import main  # torch
        return main

    run_command(load_main, "python -m progan.metrics")
