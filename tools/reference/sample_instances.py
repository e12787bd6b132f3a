"""Writes the embedded sample's COCO instances files (object labels for the multilabel pretext).

    python tools/reference/sample_instances.py

Output: crates/virtex-data/sample/annotations/instances_{train,val}2017.json, in COCO's layout
(`images`, `annotations` with `image_id`, `category_id`, `bbox`, `area`, `iscrowd`, `id`;
`categories` with COCO's 80 ids and names). The boxes were drawn by hand around the objects of
the sample photographs (see the sample's README): they only need to be plausible, since the
multilabel ablation uses the category of each instance, never its box. Images with no COCO
object (textures, the deep field, a fundus photograph, coins) have no annotation, as in COCO.
Needs only the standard library.
"""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "crates" / "virtex-data" / "sample"

# COCO 2017's 80 categories: (id, name, supercategory).
CATEGORIES = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
    (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"),
    (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"),
    (49, "knife", "kitchen"), (50, "spoon", "kitchen"), (51, "bowl", "kitchen"),
    (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"),
    (62, "chair", "furniture"), (63, "couch", "furniture"), (64, "potted plant", "furniture"),
    (65, "bed", "furniture"), (67, "dining table", "furniture"), (70, "toilet", "furniture"),
    (72, "tv", "electronic"), (73, "laptop", "electronic"), (74, "mouse", "electronic"),
    (75, "remote", "electronic"), (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"), (84, "book", "indoor"),
    (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
]
assert len(CATEGORIES) == 80

# image id → [(category id, [x, y, w, h])] in the downscaled sample images' pixels.
INSTANCES = {
    "train": {
        1: [(1, [40.0, 0.0, 400.0, 480.0])],                                  # the astronaut
        2: [(1, [120.0, 40.0, 200.0, 400.0])],                                # the photographer
        3: [(17, [30.0, 0.0, 400.0, 300.0])],                                 # the cat
        4: [(47, [90.0, 40.0, 300.0, 250.0]), (50, [300.0, 150.0, 150.0, 60.0])],  # cup, spoon
        5: [],                                                                 # Falcon 9: no COCO class
        6: [], 7: [], 8: [], 9: [], 10: [],
    },
    "val": {
        11: [(85, [100.0, 60.0, 280.0, 300.0])],                              # the wall clock
        12: [],
        13: [],
    },
}


def write(split: str) -> None:
    captions = json.loads((ROOT / "annotations" / f"captions_{split}2017.json").read_text())
    annotations = []
    for image in captions["images"]:
        for category, box in INSTANCES[split][image["id"]]:
            annotations.append({
                "id": len(annotations) + 1 + (0 if split == "train" else 1000),
                "image_id": image["id"],
                "category_id": category,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": 0,
                "segmentation": [[box[0], box[1], box[0] + box[2], box[1],
                                  box[0] + box[2], box[1] + box[3], box[0], box[1] + box[3]]],
            })
    out = {
        "info": {"description": "virtex-data sample: object labels of the sample photographs"},
        "images": captions["images"],
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": s} for i, n, s in CATEGORIES],
    }
    path = ROOT / "annotations" / f"instances_{split}2017.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({len(annotations)} instances)")


if __name__ == "__main__":
    write("train")
    write("val")
