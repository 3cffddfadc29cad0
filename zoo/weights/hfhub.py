"""Reading ``hf-hub:org/name[@revision]`` repositories that :func:`zoo.push_to_hub` wrote: their weights and
the registry architecture their config.json names. Nothing is ever imported from a repository."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..registry import RegistryError, load_registry
from .errors import WeightsError

FILES = ("model.safetensors", "config.json", "README.md")


def hub_weights(spec: str) -> tuple[Path, str]:
    """(the downloaded folder holding model.safetensors and config.json, the architecture it names)."""
    from huggingface_hub import snapshot_download  # imported when used, as the other Hub readers do
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, _, revision = spec.partition("@")
    try:
        folder = Path(snapshot_download(repo, revision=revision or None, allow_patterns=list(FILES),
                                        endpoint=os.environ.get("HF_ENDPOINT") or None))
    except LocalEntryNotFoundError:
        raise WeightsError(f"hf-hub:{spec}: not in the local Hub cache and the Hub could not be reached") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise WeightsError(f"hf-hub:{spec}: {exc}") from None
    config_path = folder / "config.json"
    if not config_path.is_file() or not (folder / "model.safetensors").is_file():
        raise WeightsError(f"hf-hub:{spec}: the repository needs model.safetensors and config.json")
    architecture = json.loads(config_path.read_text()).get("architecture")
    try:
        load_registry().entry(architecture)
    except (RegistryError, TypeError):
        raise WeightsError(f"hf-hub:{spec}: config.json names architecture {architecture!r}, which is not a model of "
                           "this zoo's registry (zoo never imports code from a repository)") from None
    return folder, architecture
