"""The command line (Typer + Rich): the only code that prints. `app` parses and calls the library."""
