"""Build the zoo from zoo/registry.yaml; see `python scripts/build.py --help` and zoo/publish/build.py."""
import sys

from zoo.publish.build import main

if __name__ == "__main__":
    sys.exit(main())
