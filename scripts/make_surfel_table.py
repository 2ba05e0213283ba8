"""Write the marching-cubes surface-element table that ``metrics`` uses for area-weighted NSD.

For each of the 256 configurations of a 2x2x2 voxel neighbourhood (bit ``2 ** (7 - (4a + 2b +
c))`` set when corner ``(a, b, c)`` is inside the mask), the classic (Lorensen) marching-cubes
surface at level 0.5 is triangulated with scikit-image, and each triangle's area vector
(``0.5 * cross(e1, e2)``, at 1 mm isotropic spacing) is stored. A configuration with more than four
inside corners uses the triangles of its complement (the same surface seen from the other side):
that resolves the ambiguous configurations as the classic 15-case table does, and is the
convention of the area-weighted surface Dice of Nikolov et al. (DeepMind ``surface-distance``).
At spacing ``(s0, s1, s2)`` a triangle's area is ``|(v0 s1 s2, v1 s0 s2, v2 s0 s1)|``.

Output: ``hermes_model/assets/marching_cubes_surfels.json``: ``{"vectors": [[[x, y, z], ...] x
256], ...}`` (exact multiples of 1/8). Needs scikit-image (not a Hermes dependency)::

    pip install scikit-image
    python scripts/make_surfel_table.py
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

OUTPUT = (
    Path(__file__).resolve().parents[1] / "hermes_model" / "assets" / "marching_cubes_surfels.json"
)


def _triangles(code: int) -> list[list[float]]:
    from skimage.measure import marching_cubes

    inside = bin(code).count("1")
    if inside in (0, 8):
        return []
    if inside > 4:
        code = 255 - code
    cube = np.zeros((2, 2, 2))
    for a, b, c in itertools.product((0, 1), repeat=3):
        cube[a, b, c] = float(code >> (7 - (4 * a + 2 * b + c)) & 1)
    vertices, faces, _, _ = marching_cubes(cube, 0.5, method="lorensen", allow_degenerate=True)
    triangles = vertices.astype(np.float64)[faces]
    area = 0.5 * np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    return [[float(x) for x in row] for row in area if np.abs(row).sum() > 0]


def main() -> None:
    import skimage

    table = [_triangles(code) for code in range(256)]
    doc = {
        "description": "marching-cubes (Lorensen) triangle area vectors per 2x2x2 code, 1 mm; "
        "bit 2**(7-(4a+2b+c)) = corner (a,b,c) inside; >4 inside corners: complement's triangles",
        "generator": f"scripts/make_surfel_table.py, scikit-image {skimage.__version__}",
        "vectors": table,
    }
    OUTPUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {OUTPUT}: {sum(len(t) for t in table)} triangles")


if __name__ == "__main__":
    main()
