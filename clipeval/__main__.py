"""``python -m clipeval`` runs the command line."""

from clipeval.cli.main import main

main()
