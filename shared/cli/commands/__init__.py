"""Subcommands that need only shared code: `unikd info`, `unikd data check|synth`."""
