"""``python -m capsnp``: see :mod:`capsnp.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
