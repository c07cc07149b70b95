"""``python -m rankkit`` (and ``torchrun -m rankkit``): the ``rankkit`` command."""

from .cli import main

if __name__ == "__main__":
    main()
