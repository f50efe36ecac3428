"""`python -m data_prep COMMAND ...`; see `python -m data_prep --help`."""

if __name__ == "__main__":
    from progan.cli import run_command

    def load_main():
        from data_prep.cli import main  # numpy, Pillow, lmdb
        return main

    run_command(load_main, "data_prep")
