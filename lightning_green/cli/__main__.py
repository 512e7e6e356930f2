"""``python -m lightning_green.cli COMMAND ...``: the same as ``lightning-green COMMAND ...``."""

from lightning_green.cli import main

raise SystemExit(main())
