"""``python -m usagehub``."""

from usagehub.cli import main

main()
