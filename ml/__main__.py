"""`python -m ml`: see ml.cli."""

from ml.cli import main

main()
