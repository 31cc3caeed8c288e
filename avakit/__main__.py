"""`python -m avakit` runs the CLI."""

from avakit.cli.app import main

main()
