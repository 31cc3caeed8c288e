"""`python -m avakit` runs the CLI."""

from avakit.cli import main

main()
