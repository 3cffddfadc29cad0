"""Jobs people run with a model: fine-tuning."""
