"""``python -m benches``: the same as ``livecomments bench``."""

import sys

from benches.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
