"""Names and one-line definitions of the evaluation metrics (``metrics``). No dependencies, so
the CLI can build its choices and help text without importing scipy."""

from __future__ import annotations

__all__ = ["HD95_METHODS", "NSD_METHODS", "DEFINITIONS", "definitions", "check_method"]

#: HD95 definitions; the first is the default.
HD95_METHODS = ("pooled", "max")
#: Surface Dice definitions; the first is the default.
NSD_METHODS = ("area", "voxel")

#: One line per metric definition (``metric`` or ``metric:method``), for reports and cards.
DEFINITIONS: dict[str, str] = {
    "dice": "Dice 2|P∩G|/(|P|+|G|) on voxels (1 when both masks are empty)",
    "hd95:pooled": "HD95, pooled: 95th percentile of the surface-voxel distances of both "
    "directions pooled into one set, mm (medpy hd95, nnU-Net v1 evaluator)",
    "hd95:max": "HD95, max: the larger of the two directed 95th percentiles of surface-voxel "
    "distances, mm (MONAI compute_hausdorff_distance default)",
    "surface_dice:area": "normalised surface Dice, area-weighted: marching-cubes surface "
    "elements weighted by area, within the tolerance (Nikolov et al. 2021; DeepMind "
    "surface-distance compute_surface_dice_at_tolerance; MSD)",
    "surface_dice:voxel": "normalised surface Dice, voxel count: each face-connected surface "
    "voxel counts once, within the tolerance (MONAI compute_surface_dice default)",
}


def definitions(hd95_method: str = "pooled", nsd_method: str = "area") -> dict[str, str]:
    """``{"dice", "hd95", "surface_dice"} -> definition`` for the chosen methods."""
    check_method(hd95_method, HD95_METHODS, "hd95")
    check_method(nsd_method, NSD_METHODS, "surface Dice")
    return {
        "dice": DEFINITIONS["dice"],
        "hd95": DEFINITIONS[f"hd95:{hd95_method}"],
        "surface_dice": DEFINITIONS[f"surface_dice:{nsd_method}"],
    }


def check_method(name: str, known: tuple[str, ...], what: str) -> str:
    """``name`` if it is one of ``known``; else ValueError naming the choices."""
    if name not in known:
        raise ValueError(f"unknown {what} method {name!r}; use one of {', '.join(known)}")
    return name
