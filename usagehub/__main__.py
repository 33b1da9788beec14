"""``python -m usagehub``."""

from usagehub.runtime.cli.main import main

main()
