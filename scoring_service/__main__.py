"""`python -m scoring_service`: see scoring_service.cli."""

from scoring_service.cli import main

main()
