"""The `unikd` command line: main.py dispatches to each installed side's subcommands."""
