"""`python -m shared.cli`: the same as the `unikd` command."""

from shared.cli.main import main

raise SystemExit(main())
