"""Semantic classes: the nuScenes-lidarseg 16-class challenge set and the synthetic twins.

The 16 evaluation classes (index 0 = ignore) are those of the nuScenes lidarseg challenge, obtained
from the 32 fine classes by the devkit's ``LidarsegClassMapper``.

The embedded synthetic dataset (``cmcr_lite.data.synthetic``) draws 12 of them, arranged in *twins*
so that the paper's argument becomes measurable:

* geometry-only twins render identically in the cameras (same colour, texture and coarse shape)
  and differ only in a fine relief the LiDAR resolves: what separates them is specific to the LiDAR,
  so a teacher that sees only images cannot pass it on;
* appearance-only twins have identical shape and differ strongly in colour/texture; the LiDAR sees
  them only through an intensity shift with overlapping distributions. What separates them is
  *shared*, plain in the images and partial in the points: the kind of information contrastive
  distillation transfers;
* ``both`` classes differ from everything else in shape and in colour.
"""

CLASS_NAMES_16 = (
    "ignore", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
    "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain",
    "manmade", "vegetation",
)
NUM_CLASSES_16 = len(CLASS_NAMES_16)  # 17 logits: 16 classes + ignore (0)
IGNORE_INDEX = 0

# Twins in the synthetic data, by 16-class name.
GEOMETRY_ONLY_TWINS = (("car", "truck"), ("terrain", "vegetation"))
APPEARANCE_ONLY_TWINS = (("driveable_surface", "sidewalk"), ("bus", "construction_vehicle"))
BOTH_DIFFER = ("pedestrian", "traffic_cone", "barrier", "manmade")

GEOMETRY_ONLY = tuple(c for pair in GEOMETRY_ONLY_TWINS for c in pair)
APPEARANCE_ONLY = tuple(c for pair in APPEARANCE_ONLY_TWINS for c in pair)
SYNTHETIC_CLASSES = GEOMETRY_ONLY + APPEARANCE_ONLY + BOTH_DIFFER


def class_group(name: str) -> str:
    """'geometry-only', 'appearance-only', 'both' or 'absent' for a 16-class name."""
    if name in GEOMETRY_ONLY:
        return "geometry-only"
    if name in APPEARANCE_ONLY:
        return "appearance-only"
    if name in BOTH_DIFFER:
        return "both"
    return "absent"


def class_index(name: str) -> int:
    """Index of a 16-class name (0..16); raises KeyError naming the bad value."""
    try:
        return CLASS_NAMES_16.index(name)
    except ValueError:
        raise KeyError(f"unknown 16-class name {name!r}; expected one of {CLASS_NAMES_16[1:]}") from None
