"""``python -m lemo_nade`` is the ``lemo-nade`` command."""

from lemo_nade.cli import main

if __name__ == "__main__":
    main()
