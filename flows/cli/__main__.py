"""`python -m flows.cli`: the `lion` console script."""

from flows.cli import main

main()
