"""``python -m trafficsnn`` is the ``trafficsnn`` command."""
from .cli import main

if __name__ == "__main__":
    main()
