"""``python -m twinjax``: the same as the ``twinjax`` command."""

from twinjax.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
