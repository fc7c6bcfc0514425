"""An exercise's own code, for the tests of its checks: the setup, starter and
student cells of exercises/NAME.ipynb (the shipped starter) or solutions/NAME.ipynb
(the answer), run into one namespace."""
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def functions(folder, name, cells=("setup", "starter")):
    """The namespace after running the cells `cells` (by id) and the student's cell."""
    nb = nbformat.read(str(ROOT / folder / f"{name}.ipynb"), as_version=4)
    ns = {}
    for cell in nb.cells:
        if cell.get("id") in cells or "student" in cell.metadata.get("tags", []):
            exec(compile(cell.source, f"{folder}/{name}.ipynb:{cell.id}", "exec"), ns)
    return ns
