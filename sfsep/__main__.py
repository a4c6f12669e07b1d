"""`python -m sfsep` runs the command line."""

from .cli import main

main()
