"""``python -m experiments <experiment> ...``: see ``experiments.cli``."""
from experiments.cli import main

if __name__ == "__main__":
    main()
