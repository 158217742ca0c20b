"""Executes every notebook in notebooks/ at the 'tiny' sizes, so none can rot.

Each notebook's cell tagged "parameters" is followed by an inserted cell that overrides the form
fields (no install, `variant = "tiny"`, a temporary workdir, the generated example as input); the
notebook then runs top to bottom with nbclient in a kernel of this interpreter.
"""

from __future__ import annotations

import json
import pathlib
import sys

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Files each notebook must leave in its workdir (a notebook not listed: the run must not fail).
EXPECTED = {
  "diffusion_hpc_demo": ["results.md", "results.json", "generated_grid.png"],
  "dpmesh_demo": ["results.md", "results.csv", "codebook/metrics.json"],
  "refine_demo": ["results.md"],
  "refine_your_video": ["results.npz", "overlay.mp4", "*.glb"],
}
# Notebooks whose tiny run compiles for minutes (DPMesh's tiny model, Diffusion-HPC's five
# trainings): `pytest -m slow`, with a longer limit per notebook and per cell.
SLOW = {"diffusion_hpc_demo", "dpmesh_demo", "refine_demo", "refine_your_video"}
LIMITS_S = {"slow": (3600, 3000), "default": (900, 600)}  # (whole notebook, one cell)
OVERRIDES = {
  "source": "",
  "install": False,
  "variant": "tiny",
  "tracks": "",
  "keypoints": "",
  "video": "",
  "score_model": "",
  "keep_viewer_running": False,
}


def parameters_index(nb) -> int:
  for i, cell in enumerate(nb.cells):
    if "parameters" in cell.get("metadata", {}).get("tags", []):
      return i
  raise AssertionError('no cell is tagged "parameters" (cell metadata tags: ["parameters"])')


def kernel_manager(tmp_path: pathlib.Path) -> KernelManager:
  """A kernel of this interpreter, whatever kernelspecs the machine has installed."""
  spec = tmp_path / "kernels" / "jhmr-test"
  spec.mkdir(parents=True)
  argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
  kernel = {"argv": argv, "display_name": "jhmr test", "language": "python"}
  (spec / "kernel.json").write_text(json.dumps(kernel))
  specs = KernelSpecManager(kernel_dirs=[str(spec.parent)], ensure_native_kernel=False)
  return KernelManager(kernel_name="jhmr-test", kernel_spec_manager=specs)


def _param(path: pathlib.Path):
  whole, _ = LIMITS_S["slow" if path.stem in SLOW else "default"]
  marks = [pytest.mark.timeout(whole)] + ([pytest.mark.slow] if path.stem in SLOW else [])
  return pytest.param(path, marks=marks, id=path.stem)


@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_notebook_runs(path: pathlib.Path, tmp_path: pathlib.Path):
  nb = nbformat.read(path, as_version=4)
  workdir = tmp_path / "run"
  values = dict(OVERRIDES, workdir=str(workdir))
  override = "\n".join(f"{k} = {v!r}" for k, v in values.items())
  nb.cells.insert(parameters_index(nb) + 1, nbformat.v4.new_code_cell(override))
  client = nbclient.NotebookClient(
    nb,
    timeout=LIMITS_S["slow" if path.stem in SLOW else "default"][1],
    kernel_name="jhmr-test",
    km=kernel_manager(tmp_path),
    resources={"metadata": {"path": str(path.parent)}},
  )
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"{path.name}: a cell failed\n{e}")
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  errors = [o for o in errors if o.output_type == "error"]
  assert not errors, f"{path.name}: {[(o.ename, o.evalue) for o in errors]}"
  for pattern in EXPECTED.get(path.stem, []):
    assert list(workdir.glob(pattern)), f"{path.name} wrote no {pattern} in {workdir}"
