"""Parity of the backbone's PyTorch exports with PyTorch and with upstream VirTex.

Checks, on a ResNet-50 with random weights written by the Rust side:

1. The torchvision export (`ResNet::save_torchvision_pth`, `virtex export --format torchvision`)
   loads with `torch.load(weights_only=True)` (and with `mmap=True`, which needs torch's 64-byte
   storage alignment), and equals, key by key in order and tensor by tensor (dtype, shape,
   values), the `state_dict()` of a torchvision resnet50 holding the same weights; it loads
   `strict=True` into torchvision's resnet50 and gives the same output.
2. The Detectron2 export (`ResNet::save_detectron2_pth`, `virtex export --format detectron2`)
   equals, key by key and tensor by tensor, what upstream's
   `TorchvisionVisualBackbone.detectron2_backbone_state_dict()` returns for those weights, and
   has the wrapper entries Detectron2's `DetectionCheckpointer` reads.
3. Only where Detectron2 can be imported (it is not on PyPI; a source checkout on PYTHONPATH
   works without building its C++ ops, with fvcore, iopath, pycocotools and their small
   dependencies): `DetectionCheckpointer(model).load(our file)` fills every backbone tensor of
   a Mask R-CNN R50-FPN and of a Faster R-CNN R50-C4 (whose res5 sits in the ROI head) built
   with `STRIDE_IN_1X1 False`, each equal to our export. Skipped, saying so, otherwise.

Run (never by CI: it needs torch, torchvision and safetensors):

    cargo run --release -p virtex-backbone --example write_exports -- /tmp/exports
    ~/.venvs/ref/bin/python tools/reference/detectron2_export.py /tmp/exports
    # For 3. as well: a Detectron2 source checkout and its pure-Python dependencies, e.g.
    #   pip install --target deps --no-deps fvcore iopath yacs termcolor tabulate tqdm \
    #       portalocker omegaconf antlr4-python3-runtime==4.9.3 cloudpickle packaging pycocotools
    #   PYTHONPATH=detectron2-checkout:deps ~/.venvs/ref/bin/python tools/reference/detectron2_export.py /tmp/exports
"""

import collections
import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file


def detectron2_backbone_state_dict(cnn: torch.nn.Module) -> dict:
    """Upstream's `TorchvisionVisualBackbone.detectron2_backbone_state_dict()`
    (`virtex/modules/visual_backbones.py`), re-implemented verbatim from its description in the
    project's VirTex spec (§1.1): the upstream repository is not reachable offline. Substring
    renames applied in this order to every key of the CNN's `state_dict()`, then a `stem.`
    prefix on every key that does not start with `res`.
    """
    rename_mapping = {
        "layer1": "res2",
        "layer2": "res3",
        "layer3": "res4",
        "layer4": "res5",
        "bn1": "conv1.norm",
        "bn2": "conv2.norm",
        "bn3": "conv3.norm",
        "downsample.0": "shortcut",
        "downsample.1": "shortcut.norm",
    }
    d2_backbone_dict = {}
    for name, param in cnn.state_dict().items():
        for old, new in rename_mapping.items():
            name = name.replace(old, new)
        if not name.startswith("res"):
            name = f"stem.{name}"
        d2_backbone_dict[name] = param
    return {
        "model": d2_backbone_dict,
        "__author__": "Karan Desai",
        "matching_heuristics": True,
    }


def compare(what: str, ours: dict, reference: dict) -> None:
    """Same keys in the same order; every tensor the same dtype, shape and values."""
    ours_keys, reference_keys = list(ours), list(reference)
    if ours_keys != reference_keys:
        missing = [k for k in reference_keys if k not in ours]
        extra = [k for k in ours_keys if k not in reference]
        raise SystemExit(
            f"{what}: keys differ (missing {missing[:5]}, extra {extra[:5]}, "
            f"or another order)"
        )
    worst = 0.0
    for key, expected in reference.items():
        found = ours[key]
        if found.dtype != expected.dtype or found.shape != expected.shape:
            raise SystemExit(
                f"{what}: `{key}` is {found.dtype} {tuple(found.shape)}, expected "
                f"{expected.dtype} {tuple(expected.shape)}"
            )
        if not torch.equal(found, expected):
            diff = (found.double() - expected.double()).abs().max().item()
            raise SystemExit(f"{what}: `{key}` differs (max |diff| {diff:e})")
        if expected.is_floating_point():
            worst = max(worst, (found - expected).abs().max().item())
    tensors = sum(t.numel() for t in reference.values())
    print(
        f"{what}: {len(reference)} keys in the same order, {tensors} values, "
        f"all tensors equal (max |diff| {worst:g})"
    )


def check_with_detectron2(path: Path, exported: dict) -> None:
    """Loads our Detectron2 file into real Detectron2 models through `DetectionCheckpointer`."""
    try:
        import detectron2
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model
    except ImportError as error:
        print(f"Detectron2 not importable ({error}): DetectionCheckpointer check skipped")
        return
    configs = Path(detectron2.__file__).resolve().parent.parent / "configs"
    if not configs.is_dir():
        configs = Path(detectron2.__file__).resolve().parent / "model_zoo" / "configs"
    cases = [
        # (config, where each exported key lives in the model)
        (
            "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
            lambda key: f"backbone.bottom_up.{key}",
        ),
        (
            "PascalVOC-Detection/faster_rcnn_R_50_C4.yaml",
            lambda key: f"roi_heads.{key}" if key.startswith("res5.") else f"backbone.{key}",
        ),
    ]
    for config, location in cases:
        cfg = get_cfg()
        cfg.merge_from_file(str(configs / config))
        cfg.MODEL.DEVICE = "cpu"
        # The settings of upstream's configs that the weights need (docs/evaluation.md);
        # plain BN stands in for SyncBN (same tensors) so that no process group is needed.
        cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
        cfg.MODEL.RESNETS.NORM = "BN"
        model = build_model(cfg)
        # Poison every tensor first, so that one the checkpointer skips cannot pass.
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.fill_(float("nan"))
        DetectionCheckpointer(model).load(str(path))
        state = model.state_dict()
        for key, expected in exported.items():
            name = location(key)
            if name not in state:
                raise SystemExit(f"{config}: the model has no `{name}` for `{key}`")
            if not torch.equal(state[name], expected):
                raise SystemExit(f"{config}: `{name}` differs from the export's `{key}`")
        backbone = [
            name
            for name in state
            if name.startswith(("backbone.bottom_up.", "backbone.res", "backbone.stem", "roi_heads.res5"))
        ]
        print(
            f"Detectron2 {config}: DetectionCheckpointer filled all {len(exported)} exported "
            f"tensors ({len(backbone)} backbone tensors in the model), each equal to the export"
        )


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    directory = Path(sys.argv[1])
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")

    # The weights, through safetensors (read by a third-party reader, not ours).
    model = torchvision.models.resnet50()
    # Upstream's backbone has no classifier (`fc = Identity`); so do our exports.
    model.fc = torch.nn.Identity()
    model.load_state_dict(load_file(directory / "resnet50.safetensors"), strict=True)
    model.eval()
    reference = model.state_dict()

    # 1. torchvision layout.
    path = directory / "resnet50_torchvision.pth"
    ours = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(ours, collections.OrderedDict), type(ours)
    print(f"{path.name}: torch.load(weights_only=True) -> OrderedDict of {len(ours)} tensors")
    compare("torchvision export vs resnet50.state_dict()", ours, reference)
    mapped = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    compare("torchvision export loaded with mmap=True", mapped, reference)
    reloaded = torchvision.models.resnet50()
    reloaded.fc = torch.nn.Identity()
    reloaded.load_state_dict(ours, strict=True)
    reloaded.eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(reloaded(images), model(images))
    assert same, "outputs differ"
    print("load_state_dict(strict=True) into torchvision resnet50: identical outputs")

    # 2. Detectron2 layout.
    path = directory / "resnet50_detectron2.pth"
    ours = torch.load(path, map_location="cpu", weights_only=True)
    upstream = detectron2_backbone_state_dict(model)
    assert isinstance(ours, dict), type(ours)
    assert list(ours) == ["model", "__author__", "matching_heuristics"], list(ours)
    assert ours["__author__"] == "virtex-rs", ours["__author__"]
    assert ours["matching_heuristics"] is True, ours["matching_heuristics"]
    print(
        f"{path.name}: torch.load(weights_only=True) -> {{'model': {type(ours['model']).__name__} "
        f"of {len(ours['model'])} tensors, '__author__': {ours['__author__']!r}, "
        f"'matching_heuristics': {ours['matching_heuristics']}}}"
    )
    compare("detectron2 export vs upstream detectron2_backbone_state_dict()", ours["model"], upstream["model"])
    stems = [k for k in ours["model"] if k.startswith("stem.")]
    print(f"stem keys: {stems}")
    print("first res keys:", [k for k in ours["model"] if k.startswith("res2.0.")][:8])

    # 3. Detectron2 itself, where it can be imported.
    check_with_detectron2(path, ours["model"])
    print("OK")


if __name__ == "__main__":
    main()
