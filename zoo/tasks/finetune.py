"""Fine-tune a zoo model with a new classifier head; single process or DistributedDataParallel via torchrun.

    python scripts/finetune.py --model squeezenet1_1 --dataset digits --epochs 3 --out out/ft
    torchrun --nproc_per_node 2 scripts/finetune.py --model squeezenet1_1 --dataset digits --out out/ft
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ..modeling.factory import create_model
from ..publish.hub import push_to_hub, save_pretrained
from ..modeling.optim import freeze_until, frozen_modules, param_groups
from ..modeling.preprocess import resized, transforms


class DigitsDataset(Dataset):
    """scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside the package), as RGB uint8 images."""

    classes = [str(d) for d in range(10)]

    def __init__(self, train: bool, transform=None, seed: int = 0):
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.default_rng(seed).permutation(len(digits.target))
        cut = int(0.8 * len(order))
        index = order[:cut] if train else order[cut:]
        images = np.clip(digits.images[index] * 16, 0, 255).astype(np.uint8)
        self.images = torch.from_numpy(images).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
        self.targets = torch.from_numpy(digits.target[index]).long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        image = self.images[i]
        return (self.transform(image) if self.transform else image), self.targets[i]


def _datasets(args, train_tf, eval_tf):
    if args.dataset == "digits":
        return DigitsDataset(True, train_tf, args.seed), DigitsDataset(False, eval_tf, args.seed)
    from torchvision.datasets import ImageFolder

    root = Path(args.data)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise ValueError(f"--data {root}: expected an ImageFolder layout with train/ and val/ subfolders")
    return ImageFolder(root / "train", train_tf), ImageFolder(root / "val", eval_tf)


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_arg: str) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available to torch on this machine")
    cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    if world == 1:
        return Distributed(device=torch.device("cuda" if cuda else "cpu"))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Distributed(dist.get_rank(), world, device)


def _evaluate(model, loader, env: Distributed) -> float:
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=env.device)
    with torch.no_grad():
        for images, targets in loader:
            images, targets = images.to(env.device), targets.to(env.device)
            correct[0] += (model(images).argmax(1) == targets).sum()
            correct[1] += len(targets)
    if env.world > 1:
        dist.all_reduce(correct)
    return float(correct[0] / correct[1])


def run(args) -> dict:
    env = _setup_distributed(args.device)
    torch.manual_seed(args.seed)
    train_tf = transforms(args.model, train=True, crop=args.image_size)
    eval_tf = transforms(args.model, train=False, crop=args.image_size)
    train_set, val_set = _datasets(args, train_tf, eval_tf)
    classes = list(getattr(train_set, "classes", []))
    pretrained = {"true": True, "none": False}.get(args.pretrained.lower(), args.pretrained)
    model = create_model(args.model, pretrained=pretrained, num_classes=len(classes))
    if args.image_size:
        size = args.image_size
        model.pretrained_cfg["input_size"] = [model.pretrained_cfg["input_size"][0], size, size]
        model.pretrained_cfg["preprocessing"] = resized(model.pretrained_cfg["preprocessing"], size)
    model.pretrained_cfg["labels"] = classes
    if args.freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(model.classifier_name + ".")
    frozen_norms = []
    if args.freeze_until is not None:
        freeze_until(model, args.freeze_until)
        frozen_norms = frozen_modules(model)
    model.to(env.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if args.layer_decay is not None or args.freeze_until is not None:
        trainable = param_groups(model, args.lr, weight_decay=args.weight_decay, layer_decay=args.layer_decay)
    net = DistributedDataParallel(model) if env.world > 1 else model

    sampler = DistributedSampler(train_set, env.world, env.rank, shuffle=True, seed=args.seed) if env.world > 1 else None
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None,
                              num_workers=args.workers, drop_last=False)
    val_sampler = DistributedSampler(val_set, env.world, env.rank, shuffle=False) if env.world > 1 else None
    val_loader = DataLoader(val_set, batch_size=args.batch_size, sampler=val_sampler, num_workers=args.workers)
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    loss_fn = torch.nn.CrossEntropyLoss()
    history = []
    for epoch in range(args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        if args.freeze_backbone:  # keep frozen batch-norm statistics frozen too
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        for m in frozen_norms:
            m.eval()
        total = 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not env.main, leave=False)
        for images, targets in bar:
            images, targets = images.to(env.device), targets.to(env.device)
            loss = loss_fn(net(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        accuracy = _evaluate(model, val_loader, env)
        history.append({"epoch": epoch + 1, "train_loss": total / max(1, len(train_loader)), "val_accuracy": accuracy})
        if env.main:
            print(f"epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f}, val accuracy {accuracy:.3f}")
    result = {"model": args.model, "classes": classes, "history": history, "world_size": env.world,
              "layer_decay": args.layer_decay, "freeze_until": args.freeze_until,
              "val_accuracy": history[-1]["val_accuracy"] if history else None}
    model.pretrained_cfg["finetune"] = {k: v for k, v in result.items() if k != "classes"}
    if env.main and args.out:
        save_pretrained(model, args.out)
    if env.main and args.push_to_hub:
        result["pushed"] = push_to_hub(model, args.push_to_hub)
    if env.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="scripts/finetune.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a zoo model name")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--dataset", choices=["digits"], help="a packaged dataset")
    data.add_argument("--data", help="an ImageFolder root with train/ and val/")
    parser.add_argument("--pretrained", default="true",
                        help="'true' (default: the pretrained weights, from the pinned Hub revision or the upstream "
                             "ONNX file), 'none' (random initialization), or a weights file or folder")
    parser.add_argument("--freeze-backbone", action="store_true", help="train only the new classifier")
    parser.add_argument("--freeze-until", type=int, metavar="STAGE",
                        help="freeze the layers up to and including this stage (see model.feature_info)")
    parser.add_argument("--layer-decay", type=float, metavar="RATE",
                        help="layer-wise learning-rate decay, e.g. 0.75: each stage back from the classifier "
                             "trains at RATE times the next one's learning rate")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--image-size", type=int, help="input size (default: the model's)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="save model.safetensors and config.json here")
    parser.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload the result to this Hub repository")
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..registry import RegistryError
    from ..weights.pretrained import WeightsError

    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except WeightsError as exc:
        print(f"error: {exc}\n(choose other weights with --pretrained PATH, or --pretrained none)", file=sys.stderr)
        return 2
    except (RegistryError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if result["val_accuracy"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
