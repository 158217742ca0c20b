"""Every TFDS dataset builder of jhmr, by name (importing this module registers them with TFDS).

  builder = make_builder("threedpw/frames", data_dir=DIR, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))
  source = builder.as_data_source()["test"]     # TF-free random access (numpy)

Each builder's module docstring says what to download from where and the manual_dir layout.
"""

from __future__ import annotations

from jhmr.data.cmu_mocap import cmu_mocap_dataset_builder as _cmu
from jhmr.data.diffusion_hpc_synthetic import diffusion_hpc_synthetic_dataset_builder as _hpc
from jhmr.data.emdb import emdb_dataset_builder as _emdb
from jhmr.data.h36m import h36m_dataset_builder as _h36m
from jhmr.data.ski_pose import ski_pose_dataset_builder as _ski_pose
from jhmr.data.smart import smart_dataset_builder as _smart
from jhmr.data.synthetic import synthetic_dataset_builder as _synthetic
from jhmr.data.threedpw import threedpw_dataset_builder as _threedpw

BUILDERS = {
  "threedpw": _threedpw.Builder,
  "emdb": _emdb.Builder,
  "h36m": _h36m.Builder,
  "smart": _smart.Builder,
  "ski_pose": _ski_pose.Builder,
  "cmu_mocap": _cmu.Builder,
  "synthetic": _synthetic.Builder,
  "diffusion_hpc_synthetic": _hpc.Builder,
}


def make_builder(name: str, **kwargs):
  """`name` is `<dataset>` or `<dataset>/<config>`; kwargs go to the builder (data_dir,
  file_format, ...). Raises ValueError listing the valid names."""
  dataset, _, config = name.partition("/")
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(sorted(BUILDERS))}")
  cls = BUILDERS[dataset]
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  if config and config not in configs:
    raise ValueError(f"unknown config {config!r} of {dataset}; valid: {', '.join(configs)}")
  return cls(config=config or None, **kwargs)
