"""Fine-tune a zoo model; see zoo/tasks/finetune.py. Works under torchrun for data-parallel training."""
import sys

from zoo.tasks.finetune import main

if __name__ == "__main__":
    sys.exit(main())
