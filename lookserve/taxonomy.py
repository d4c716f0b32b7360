"""Names shared by data, models and clients."""

from __future__ import annotations

#: street2shop's 11 categories, in the order used as class ids (detector class id = index + 1;
#: 0 is background inside the detector and never reaches a client).
CATEGORIES: tuple[str, ...] = (
    "bags",
    "belts",
    "dresses",
    "eyewear",
    "footwear",
    "hats",
    "leggings",
    "outerwear",
    "pants",
    "skirts",
    "tops",
)

#: footwear closure types of the thumbnail job, in view-classifier output order.
FOOTWEAR_TYPES: tuple[str, ...] = (
    "lace-up",
    "slip-on",
    "buckle",
    "hook-and-loop",
    "back-strap",
    "zip",
)

#: the five views of a shoe.
VIEWS: tuple[str, ...] = ("front", "back", "left", "right", "sole")


def category_id(name: str) -> int:
    """Index of a category name; raises ValueError naming the valid ones."""
    try:
        return CATEGORIES.index(name)
    except ValueError:
        raise ValueError(f"unknown category {name!r}; expected one of {', '.join(CATEGORIES)}") from None
