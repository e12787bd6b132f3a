#!/usr/bin/env python3
"""Reference fixtures for `virtex-eval`'s VOC07 SVM protocol, computed with scikit-learn.

The protocol is upstream's `scripts/clf_voc07.py::train_test_single_svm`, written out here:
per class, LinearSVC(C, class_weight={1: 2, -1: 1}, penalty="l2", loss="squared_hinge",
max_iter=2000) for C in {0.01, 0.1, 1, 10}, scored by cross_val_score(cv=3,
scoring="average_precision"), the best mean CV AP (strictly greater, starting from 0) refit on
all of trainval, test AP = average_precision_score over non-difficult test images. Difficult
training images are negatives.

Two deliberate pins, so the Rust port can be compared to rounding error rather than to the
solver tolerance: `dual=True` (what upstream got with the scikit-learn of its time; from 1.5 on
the default `dual="auto"` picks the primal solver for n_samples > n_features) and
`random_state=0` (upstream: None, i.e. a random coordinate order). The results of upstream's
call verbatim (no dual, no random_state) are stored too, under "verbatim", for the docs.

Writes into crates/virtex-eval/tests/fixtures/ (committed; CI never runs Python):

- voc07_random.json          random float32 features (L2-normalised) and VOC labels for 3 classes:
                             per-class CV fold APs, chosen C, test AP, the refit SVM's coef_,
                             intercept_, n_iter_ and test decision values; an early-stopped fit
                             (max_iter=3); StratifiedKFold(3) test folds for random label vectors.
- voc07_tiny/VOC2007/        a VOCdevkit-layout set: 36 small JPEGs cut from scikit-image's
                             public-domain / CC0 sample photos (astronaut, chelsea, coffee, rocket,
                             hubble_deep_field), ImageSets/Main/{aeroplane,cat,person}_{trainval,test}.txt
- voc07_tiny_backbone.pth    a tiny randomised torchvision-layout bottleneck ResNet (layer4: 128-d)
- voc07_tiny_reference.json  its eval-mode features (Resize(256) → CenterCrop(224) → ImageNet
                             normalisation → GAP → L2, torchvision on PIL images as the `virtex`
                             CLI does) and the protocol's results on them.

Usage:  ~/.venvs/ref/bin/pip install scikit-learn scikit-image
        ~/.venvs/ref/bin/python tools/reference/voc07_svm.py
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from skimage import data as skdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import LinearSVC
from torchvision.models.resnet import Bottleneck, ResNet

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "virtex-eval" / "tests" / "fixtures"
COSTS = [0.01, 0.1, 1.0, 10.0]

warnings.simplefilter("ignore", ConvergenceWarning)
warnings.simplefilter("ignore", UserWarning)


def make_svm(cost: float, pinned: bool) -> LinearSVC:
    kwargs = dict(C=cost, class_weight={1: 2, -1: 1}, penalty="l2", loss="squared_hinge",
                  max_iter=2000)
    if pinned:
        kwargs.update(dual=True, random_state=0)
    return LinearSVC(**kwargs)


def train_test_single_svm(x_train, y_train, x_test, y_test, pinned=True) -> dict:
    """Upstream's per-class protocol. y_* use upstream's remapped labels: 1, 0, -1 (difficult)."""
    cls_labels = np.copy(y_train)
    cls_labels[np.where(cls_labels == 0)] = -1
    best_ap, best_clf, best_cost = 0.0, None, 0.0
    cv = []
    for cost in COSTS:
        clf = make_svm(cost, pinned)
        ap_scores = cross_val_score(clf, x_train, cls_labels, cv=3, scoring="average_precision")
        clf.fit(x_train, cls_labels)
        cv.append({"cost": cost, "fold_ap": [float(a) for a in ap_scores],
                   "mean_ap": float(ap_scores.mean())})
        if ap_scores.mean() > best_ap:
            best_ap, best_clf, best_cost = ap_scores.mean(), clf, cost
    predictions = best_clf.decision_function(x_test)
    keep = y_test != -1
    targets = y_test[keep] > 0
    test_ap = average_precision_score(targets, predictions[keep])
    return {
        "cross_validation": cv,
        "best_cost": best_cost,
        "best_cv_ap": float(best_ap),
        "test_ap": float(test_ap),
        "coef": best_clf.coef_[0].tolist(),
        "intercept": float(best_clf.intercept_[0]),
        "n_iter": int(best_clf.n_iter_),
        "test_decision": predictions.tolist(),
    }


def protocol(x_train, y_train, x_test, y_test, names) -> dict:
    pinned = [train_test_single_svm(x_train, y_train[:, c], x_test, y_test[:, c], True)
              for c in range(len(names))]
    verbatim = [train_test_single_svm(x_train, y_train[:, c], x_test, y_test[:, c], False)
                for c in range(len(names))]
    for name, result in zip(names, pinned):
        result["class_name"] = name
    return {
        "classes": pinned,
        "map": float(100 * np.mean([r["test_ap"] for r in pinned])),
        "verbatim": [{"best_cost": r["best_cost"], "test_ap": r["test_ap"]} for r in verbatim],
        "verbatim_map": float(100 * np.mean([r["test_ap"] for r in verbatim])),
    }


def voc_labels(rng, n, classes):
    """VOC values 1 / -1 / 0 drawn per class, returned remapped as upstream does (1, 0, -1)."""
    raw = rng.choice([1, -1, 0], size=(n, classes), p=[0.3, 0.62, 0.08])
    return np.where(raw == -1, 0, np.where(raw == 0, -1, 1)).astype(np.int32)


def random_fixture() -> dict:
    rng = np.random.RandomState(2021)
    names = ["aeroplane", "bird", "cat"]
    d, n_train, n_test = 32, 120, 60
    directions = rng.randn(len(names), d)
    y_train = voc_labels(rng, n_train, len(names))
    y_test = voc_labels(rng, n_test, len(names))

    def features(y):
        x = rng.randn(len(y), d) + 0.8 * (y != 0).astype(float) @ directions
        x = np.abs(x)  # non-negative like post-ReLU pooled features
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)

    x_train, x_test = features(y_train), features(y_test)
    result = protocol(x_train, y_train, x_test, y_test, names)

    # An early-stopped fit: the iterates themselves must agree, not only the optimum.
    labels = np.where(y_train[:, 0] == 1, 1, -1)
    early = make_svm(10.0, True).set_params(max_iter=3).fit(x_train, labels)

    folds = []
    for n in [10, 11, 17, 50]:
        y = rng.choice([-1, 1], size=n, p=[0.7, 0.3])
        if len(set(y)) < 2:
            y[0] = -y[0]
        f = np.empty(n, dtype=int)
        for k, (_, test) in enumerate(StratifiedKFold(3).split(np.zeros((n, 1)), y)):
            f[test] = k
        folds.append({"labels": y.tolist(), "test_folds": f.tolist()})

    return {
        "class_names": names,
        "dim": d,
        "train_features": x_train.ravel().tolist(),
        "train_labels": y_train.tolist(),
        "test_features": x_test.ravel().tolist(),
        "test_labels": y_test.tolist(),
        "result": result,
        "early_stop": {"class": 0, "cost": 10.0, "max_iter": 3, "coef": early.coef_[0].tolist(),
                       "intercept": float(early.intercept_[0]), "n_iter": int(early.n_iter_)},
        "stratified_folds": folds,
    }


# ---------------------------------------------------------------------------------------------
# The tiny VOC-layout set.

class NarrowResNet(ResNet):
    """torchvision's ResNet with a configurable stem width (as tools/reference/backbone.py)."""

    def __init__(self, block, layers, stem: int):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = stem, 1, 1, 64
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, stem, layers[0])
        self.layer2 = self._make_layer(block, stem * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, stem * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, stem * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()


def randomise(model: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=g))
                module.bias.copy_(0.1 * torch.randn(c, generator=g))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                module.running_var.copy_(0.5 + torch.rand(c, generator=g))
            elif isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                module.weight.copy_((2.0 / fan_out) ** 0.5
                                    * torch.randn(module.weight.shape, generator=g))


SOURCES = {  # sample image -> the class it shows (None: background for every class)
    "astronaut": "person", "chelsea": "cat", "rocket": "aeroplane", "coffee": None,
    "hubble_deep_field": None,
}
TINY_CLASSES = ["aeroplane", "cat", "person"]


def build_voc_tiny(root: Path, rng: np.random.RandomState) -> tuple[list, list]:
    if root.exists():
        shutil.rmtree(root)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    items = []  # (image id, class or None)
    sources = list(SOURCES)
    for index in range(36):
        name = sources[index % len(sources)]
        image = getattr(skdata, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        h, w = image.shape[:2]
        ch, cw = int(h * rng.uniform(0.55, 0.9)), int(w * rng.uniform(0.55, 0.9))
        top, left = rng.randint(0, h - ch + 1), rng.randint(0, w - cw + 1)
        crop = Image.fromarray(image[top:top + ch, left:left + cw, :3])
        size = (96, 72) if index % 3 else (72, 96)
        image_id = f"{index + 1:06d}"
        crop.resize(size, Image.BILINEAR).save(root / "JPEGImages" / f"{image_id}.jpg",
                                               quality=85)
        items.append((image_id, SOURCES[name]))
    order = rng.permutation(len(items))
    trainval = sorted(items[i] for i in order[:24])
    test = sorted(items[i] for i in order[24:])
    for split, members in [("trainval", trainval), ("test", test)]:
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "".join(f"{i}\n" for i, _ in members))
        for cls in TINY_CLASSES:
            lines = []
            for image_id, shown in members:
                value = 1 if shown == cls else -1
                # A few difficult ones: positives sometimes, plus one odd negative per split.
                if value == 1 and rng.rand() < 0.15:
                    value = 0
                lines.append(f"{image_id} {'' if value < 0 else ' '}{value}\n")
            (root / "ImageSets" / "Main" / f"{cls}_{split}.txt").write_text("".join(lines))
    return trainval, test


def read_split(root: Path, split: str):
    """Upstream's VOC07ClassificationDataset label reading."""
    paths = sorted((root / "ImageSets" / "Main").glob(f"*_{split}.txt"))
    names = [p.name.split("_")[0] for p in paths]
    labels: dict[str, list[int]] = {}
    for c, path in enumerate(paths):
        for line in path.read_text().splitlines():
            image, value = line.strip().split()
            value = int(value)
            value = 0 if value == -1 else -1 if value == 0 else 1
            labels.setdefault(image, [-1] * len(names))[c] = value
    ids = sorted(labels)
    return names, ids, np.array([labels[i] for i in ids], dtype=np.int32)


def tiny_fixture() -> dict:
    rng = np.random.RandomState(7)
    root = OUT / "voc07_tiny" / "VOC2007"
    build_voc_tiny(root, rng)
    g = torch.Generator().manual_seed(7)
    model = NarrowResNet(Bottleneck, [1, 1, 1, 1], stem=4)
    randomise(model, g)
    model.eval()
    state = {k: v for k, v in model.state_dict().items()}
    torch.save(state, OUT / "voc07_tiny_backbone.pth")

    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def features(ids):
        batch = torch.stack([transform(Image.open(root / "JPEGImages" / f"{i}.jpg")
                                       .convert("RGB")) for i in ids])
        with torch.no_grad():
            pooled = model(batch)  # avgpool + flatten, fc = Identity
        return F.normalize(pooled, dim=1).numpy()

    names, train_ids, y_train = read_split(root, "trainval")
    _, test_ids, y_test = read_split(root, "test")
    x_train, x_test = features(train_ids), features(test_ids)
    return {
        "class_names": names,
        "train_ids": train_ids,
        "test_ids": test_ids,
        "train_labels": y_train.tolist(),
        "test_labels": y_test.tolist(),
        "dim": int(x_train.shape[1]),
        "train_features": x_train.ravel().tolist(),
        "test_features": x_test.ravel().tolist(),
        "result": protocol(x_train, y_train, x_test, y_test, names),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    random = random_fixture()
    (OUT / "voc07_random.json").write_text(json.dumps(random))
    print("random: mAP", random["result"]["map"], "verbatim", random["result"]["verbatim_map"],
          "costs", [c["best_cost"] for c in random["result"]["classes"]],
          "n_iter", [c["n_iter"] for c in random["result"]["classes"]])
    tiny = tiny_fixture()
    (OUT / "voc07_tiny_reference.json").write_text(json.dumps(tiny))
    print("tiny: mAP", tiny["result"]["map"], "verbatim", tiny["result"]["verbatim_map"],
          "costs", [c["best_cost"] for c in tiny["result"]["classes"]])


if __name__ == "__main__":
    main()
