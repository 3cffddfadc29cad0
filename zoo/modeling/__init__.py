"""The model API: the shared model class, create_model, backbones, heads, preprocessing, labels."""
import warnings

# `python -m zoo.modeling.backbone` prints the stages, and the model class imports that module: runpy's warning
# that it was imported before it ran says nothing wrong here.
warnings.filterwarnings("ignore", message="'zoo.modeling.backbone' found in sys.modules", category=RuntimeWarning)
