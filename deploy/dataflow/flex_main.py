"""Flex template entry point: `python flex_main.py score askllm --input ... --output ...`.

The template's parameters arrive as flags; the first words select the gristmill command.
"""

import sys

from gristmill.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
