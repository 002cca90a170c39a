"""`python -m kdrun` is the `kdrun` console script."""

from kdrun.cli import main

main()
