"""The command line: one module per command, and main.py, where errors become exit codes."""
