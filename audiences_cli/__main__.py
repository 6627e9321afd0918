"""`python -m audiences_cli` is the `audiences` console script."""

from audiences_cli.main import main

main()
