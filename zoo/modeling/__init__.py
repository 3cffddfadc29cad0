"""The model API: the shared model class, create_model, backbones, heads, preprocessing, labels."""
