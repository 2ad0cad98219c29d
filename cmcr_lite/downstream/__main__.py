"""``python -m cmcr_lite.downstream``: see :mod:`cmcr_lite.downstream.cli`."""
from cmcr_lite.downstream.cli import main

main()
