"""`python -m scoring_service`: see scoring_service.cli."""

from scoring_service.cli import main

if __name__ == "__main__":  # not when the model loader's spawned child imports it
    main()
