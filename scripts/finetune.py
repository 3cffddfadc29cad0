"""Fine-tune a zoo model; see zoo/finetune.py. Works under torchrun for data-parallel training."""
import sys

from zoo.finetune import main

if __name__ == "__main__":
    sys.exit(main())
