"""Models on the Hugging Face Hub, timm-style and without remote code: ``push_to_hub`` uploads weights, a
config.json naming a registry architecture and a model card; ``create_model("hf-hub:org/name")`` builds
that registry architecture and loads them (reading them is :mod:`zoo.weights.hfhub`)."""
from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from safetensors.torch import save_file

from ..convert.api import write_atomically
from ..modeling.factory import model_config
from ..modeling.model import ZooModel
from ..weights.download import file_sha256
from ..weights.hfhub import FILES


class PublishError(RuntimeError):
    """An upload did not arrive whole; the message names the repository, the revision and what differed."""


def is_loopback(endpoint: str | None) -> bool:
    host = urlparse(endpoint or "").hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class HubPublisher:
    """Publishes a folder with huggingface_hub: create the repository if needed, then one commit."""

    def __init__(self, endpoint: str | None = None, token: str | None = None):
        self.endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
        self.token = token

    def publish(self, folder: Path, repo: str, message: str, *, private: bool = False,
                revision: str | None = None) -> str:
        """Upload the folder's files to the repo in a single commit; return its revision."""
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token)
        api.create_repo(repo, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        # One create_commit, not upload_folder: with hf_xet installed upload_folder may split a folder into
        # several commits, and an interrupted one would leave new weights beside an old config on the branch.
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(Path(folder) / name))
                      for name in FILES if (Path(folder) / name).is_file()]
        info = api.create_commit(repo, operations, commit_message=message, revision=revision)
        return info.oid


def verify_upload(repo: str, revision: str, sha256: str, *, endpoint: str | None = None,
                  token: str | None = None, filename: str = "model.safetensors") -> None:
    """Download ``filename`` of ``repo@revision`` back (into a scratch cache, not the user's) and check
    its sha256: an upload counts as published only once the Hub serves the bytes that were built."""
    from huggingface_hub import hf_hub_download

    where = f"{repo}@{revision} on {endpoint or 'the Hugging Face Hub'}"
    with tempfile.TemporaryDirectory(prefix="zoo-verify-") as tmp:
        try:
            path = hf_hub_download(repo, filename, revision=revision, endpoint=endpoint, token=token, cache_dir=tmp)
        except Exception as exc:  # whatever the reason, the upload is unverified
            raise PublishError(f"{where}: downloading {filename} back failed ({type(exc).__name__}: {exc})") from None
        actual = file_sha256(path)
    if actual != sha256:
        raise PublishError(f"{where}: {filename} downloaded back has sha256 {actual}, the build wrote {sha256}")


def save_pretrained(model, folder: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and its ``config.json`` (classes, labels, preprocessing) into ``folder``;
    ``zoo.create_model(name, pretrained=folder)`` reads them back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomically(folder / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    config = {**model_config(model), **(extra or {})}
    write_atomically(folder / "config.json", lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    return folder


def _card(repo: str, config: dict[str, Any]) -> str:
    labels = config.get("labels")
    classes = f"{len(labels)} classes ({', '.join(map(str, labels[:10]))}{', ...' if len(labels) > 10 else ''})" \
        if isinstance(labels, list) else f"{config['num_classes']} classes"
    lines = ["---", "library_name: pytorch", "tags: [image-classification, zoo]", "---", "", f"# {repo}", ""]
    if config.get("standin"):
        lines += ["> **Stand-in weights**: the backbone was seeded random numbers, not pretrained.", ""]
    lines += [f"A `{config['architecture']}` from the zoo's registry with {classes}.", "",
              "```python", "import zoo", "", f'model = zoo.create_model("hf-hub:{repo}").eval()',
              "preprocess, names = zoo.transforms(model), zoo.labels(model)", "```", ""]
    return "\n".join(lines)


def push_to_hub(model, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, token: str | None = None) -> str:
    """Upload a zoo model (weights, config.json, model card) to ``repo_id`` in one commit, download the weights
    back and check their sha256 (a :class:`PublishError` otherwise); return the commit revision.

    ``zoo.create_model(f"hf-hub:{repo_id}")`` then rebuilds it from the registry architecture it names.
    """
    backbone = hasattr(model, "feature_info") and hasattr(model, "pretrained_cfg")  # features_only=True
    if not (isinstance(model, ZooModel) or backbone):
        raise TypeError(f"push_to_hub takes a zoo model (zoo.create_model(...)), got {type(model).__name__}")
    with tempfile.TemporaryDirectory(prefix="zoo-push-") as tmp:
        folder = save_pretrained(model, tmp)
        config = json.loads((folder / "config.json").read_text())
        (folder / "README.md").write_text(_card(repo_id, config))
        message = commit_message or f"zoo: {config['architecture']} with {config['num_classes']} classes"
        publisher = HubPublisher(token=token)
        where = f"{repo_id} on {publisher.endpoint or 'the Hugging Face Hub'}"
        if config.get("standin") and not is_loopback(publisher.endpoint):
            raise PublishError(f"{where}: refusing to push stand-in weights (random, not pretrained); they may "
                               "only go to a loopback test Hub, as `scripts/build.py --push` does")
        try:
            pushed = publisher.publish(folder, repo_id, message, private=private, revision=revision)
        except Exception as exc:  # no network, no permission, a server error: the package's own one-line error
            raise PublishError(f"{where}: upload failed ({type(exc).__name__}: {exc})") from None
        verify_upload(repo_id, pushed, file_sha256(folder / "model.safetensors"), endpoint=publisher.endpoint,
                      token=token)
        return pushed


__all__ = ["push_to_hub", "save_pretrained", "HubPublisher", "PublishError", "verify_upload"]
