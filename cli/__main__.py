"""``python -m clipeval.cli`` runs the command line."""

from clipeval.cli.main import main

main()
