"""`python -m offload` runs the command line, exactly like the `offload` console script."""

from __future__ import annotations

from offload.cli import main

main()
