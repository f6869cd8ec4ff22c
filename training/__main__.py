"""``python -m training`` (also what ``accelerate launch -m training`` runs)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
