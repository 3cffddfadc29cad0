"""Build the zoo from zoo/registry.yaml; see `python scripts/build.py --help` and zoo/build.py."""
import sys

from zoo.build import main

if __name__ == "__main__":
    sys.exit(main())
