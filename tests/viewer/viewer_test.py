"""The results viewer: pure mesh functions, the overlay, the CLI, and a real headless browser."""

import io
import pathlib
import shutil
import socket
import tempfile
import time

import numpy as np
import pytest

from jhmr.body import load_body_model
from jhmr.geometry import rotations
from jhmr.io.results import Results, load_results, save_results
from jhmr.viewer import __main__ as cli
from jhmr.viewer import app, meshes, overlay

BODY = "anny-tiny"
WIDTH, HEIGHT = 128, 96
NUM_FRAMES, NUM_ITERATIONS = 4, 3
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOT_DIR = pathlib.Path(tempfile.gettempdir())


@pytest.fixture(scope="module")
def body():
  return load_body_model(BODY)


def _rows(frames_tracks):
  """Per-row pose parameters: upright people (R = Rx(pi) Ry(yaw)), turning, kicking, moving."""
  orient, pose, cam_t = [], [], []
  for frame, track in frames_tracks:
    yaw = 0.5 * frame - 0.4 * track
    ry = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    orient.append(
      np.asarray(rotations.matrix_to_axis_angle(np.float32(np.diag([1.0, -1.0, -1.0]) @ ry)))
    )
    p = np.zeros((23, 3))
    p[15, 2] = -1.2 + 0.6 * frame  # left shoulder (SMPL joint 16 = body_pose index 15)
    p[16, 2] = 1.2 - 0.6 * frame  # right shoulder
    p[0, 0] = -0.3 * frame  # left hip
    pose.append(p)
    cam_t.append([-0.6 + 1.2 * track + 0.25 * frame, 0.1, 4.5])
  return (np.asarray(a, np.float32) for a in (orient, pose, cam_t))


def make_results(body, *, refinement: bool = True) -> Results:
  """2 tracks x 4 frames (track 1 is absent at frame 2), a 128x96 camera, 3 iterations."""
  frames_tracks = [(f, t) for f in range(NUM_FRAMES) for t in (0, 1) if (f, t) != (2, 1)]
  n = len(frames_tracks)
  orient, pose, cam_t = _rows(frames_tracks)
  betas = np.zeros((n, body.num_betas), np.float32)
  joints = np.asarray(body(betas, pose, orient).joints) + cam_t[:, None]
  k = np.array([[150.0, 0, WIDTH / 2], [0, 150.0, HEIGHT / 2], [0, 0, 1]], np.float32)
  fields = dict(
    track_id=[t for _, t in frames_tracks],
    frame=[f for f, _ in frames_tracks],
    global_orient=orient,
    body_pose=pose,
    betas=betas,
    cam_t=cam_t,
    intrinsics=np.repeat(k[None], n, 0),
    image_size=np.repeat([[WIDTH, HEIGHT]], n, 0),
    joints={"smpl24": joints},
    metadata={"body_model": BODY, "program": "viewer_test", "fps": 4},
  )
  if refinement:
    final = np.concatenate([orient[:, None], pose], axis=1)  # [N, 24, 3]
    steps = np.linspace(0.0, 1.0, NUM_ITERATIONS, dtype=np.float32)[None, :, None, None]
    initial = final.copy()
    initial[:, 1:] = 0.0  # the initial estimate: rest body pose
    fields["refinement_pose"] = initial[:, None] + steps * (final - initial)[:, None]
    fields["refinement_cam_t"] = np.repeat(cam_t[:, None], NUM_ITERATIONS, 1) + (
      (1.0 - steps[..., 0]) * np.array([0.0, 0.0, 0.5], np.float32)
    )
  return Results(**fields)


# -- pure functions ------------------------------------------------------------------------------


def test_frame_meshes_counts_and_world_frame(body):
  results = make_results(body)
  per_frame = meshes.frame_meshes(results, body)
  assert list(per_frame) == [0, 1, 2, 3]
  assert {f: sorted(v) for f, v in per_frame.items()} == {0: [0, 1], 1: [0, 1], 2: [0], 3: [0, 1]}
  assert per_frame[0][0].shape == (body.num_vertices, 3) == (1229, 3)
  camera = meshes.frame_meshes(results, body, world=False)
  row = 3  # frame 1, track 1
  assert (results.frame[row], results.track_id[row]) == (1, 1)
  expected = np.asarray(
    body(results.betas[row], results.body_pose[row], results.global_orient[row]).vertices
  )
  np.testing.assert_allclose(camera[1][1], expected + results.cam_t[row], atol=1e-5)
  # world = 180 degrees about x: (x, y, z) -> (x, -y, -z); y up, the people in front (z < 0).
  np.testing.assert_allclose(per_frame[1][1], camera[1][1] * [1, -1, -1], atol=1e-6)
  np.testing.assert_allclose(meshes.CAMERA_TO_WORLD @ [1.0, 2.0, 3.0], [1.0, -2.0, -3.0])
  world = per_frame[0][0]
  assert np.all(world[:, 2] < 0)
  height = world[:, 1].max() - world[:, 1].min()
  assert height > 1.2 and np.ptp(world[:, 0]) < height  # upright: taller than wide


def test_guidance_iterations(body):
  results = make_results(body)
  assert meshes.num_iterations(results) == NUM_ITERATIONS
  final = meshes.row_vertices(results, body)
  np.testing.assert_allclose(
    meshes.row_vertices(results, body, NUM_ITERATIONS - 1), final, atol=1e-5
  )
  assert np.abs(meshes.row_vertices(results, body, 0) - final).max() > 0.1
  with pytest.raises(ValueError, match="out of range"):
    meshes.row_vertices(results, body, NUM_ITERATIONS)
  assert meshes.num_iterations(make_results(body, refinement=False)) == 0


def test_render_overlay_draws_people_over_grey(body):
  results = make_results(body)
  verts = meshes.row_vertices(results, body)[:2]  # frame 0, both tracks
  grey = np.full((HEIGHT, WIDTH, 3), overlay.BACKGROUND, np.uint8)
  colors = np.array([[1.0, 0.2, 0.2], [0.2, 0.2, 1.0]], np.float32)
  image = overlay.render_overlay(grey, verts, body.faces, results.intrinsics[0], colors)
  assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
  changed = np.any(image != overlay.BACKGROUND, axis=-1)
  assert 0.03 < changed.mean() < 0.6
  left, right = image[:, : WIDTH // 2], image[:, WIDTH // 2 :]
  red = lambda x: np.sum(x[..., 0] > x[..., 2] + 20)
  assert red(left) > red(right)  # track 0 (red) stands on the left
  # Half size: the same picture at half the resolution.
  small = overlay.render_overlay(
    grey[::2, ::2], verts, body.faces, results.intrinsics[0], colors, scale=0.5
  )
  assert abs(np.any(small != overlay.BACKGROUND, -1).mean() - changed.mean()) < 0.05


def test_cli_missing_results_file_is_one_line(tmp_path, capsys):
  assert cli.main([str(tmp_path / "missing.npz")]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "not found" in err and err.count("\n") == 1


def test_cli_corrupt_results_file(tmp_path, capsys):
  path = tmp_path / "bad.npz"
  path.write_bytes(b"not a zip")
  assert cli.main([str(path)]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "Traceback" not in err


def test_frame_source_image_directory(tmp_path):
  import imageio.v2 as iio

  for i in range(3):
    iio.imwrite(tmp_path / f"{i:03d}.png", np.full((48, 64, 3), 40 * i, np.uint8))
  source = overlay.FrameSource(tmp_path, 32, 24, max_frames=3)
  assert source(1).shape == (24, 32, 3) and int(source(2)[0, 0, 0]) == 80
  assert source(5) is None
  with pytest.raises(FileNotFoundError):
    overlay.FrameSource(tmp_path / "nope.mp4", 32, 24, 1)


def test_frame_source_video(tmp_path):
  from jhmr.io.video import write_mp4

  frames = np.zeros((4, 96, 128, 3), np.uint8)
  frames[:, :, :, 0] = (60 * np.arange(4))[:, None, None]
  write_mp4(tmp_path / "clip.mp4", frames, fps=4)
  source = overlay.FrameSource(tmp_path / "clip.mp4", 64, 48, max_frames=3)
  assert source(0).shape == (48, 64, 3) and source(3) is None
  assert abs(int(source(2)[24, 32, 0]) - 120) < 12


@pytest.mark.timeout(120)
def test_cli_serves_until_interrupted(body, tmp_path):
  import signal
  import subprocess
  import sys
  import urllib.request

  path = save_results(tmp_path / "results.npz", make_results(body))
  port = _free_port()
  command = [sys.executable, "-m", "jhmr.viewer", str(path), "--port", str(port)]
  proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    line = proc.stdout.readline()
    while line and "jhmr viewer:" not in line:
      line = proc.stdout.readline()
    assert f"http://127.0.0.1:{port}" in line, line
    with urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=10) as response:
      assert response.status == 200
    proc.send_signal(signal.SIGINT)
    # communicate() drains the pipe while waiting (a full pipe would block the viewer's exit);
    # 90 s: stopping joins the render thread, which may be compiling on a loaded CI machine.
    try:
      rest, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
      proc.kill()
      rest, _ = proc.communicate()
      pytest.fail(f"the viewer did not stop within 90 s of SIGINT; its output:\n{rest[-3000:]}")
    assert proc.returncode == 0, rest[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


# -- the server and a real browser ---------------------------------------------------------------


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _webdriver(user_data_dir):
  if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
    pytest.skip(f"needs Debian chromium ({CHROMIUM}) and chromedriver ({CHROMEDRIVER})")
  pytest.importorskip("selenium")  # a reference of the test extras (tests/conftest.py)
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # WebGL without a GPU (Chromium >= 137)
    "--use-angle=swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--user-data-dir={user_data_dir}",
    "--window-size=900,700",
  ):
    options.add_argument(flag)
  return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _canvas_pixels(driver) -> np.ndarray:
  """[h, w, 3] uint8 screenshot crop of the largest <canvas> (the 3D view)."""
  from PIL import Image
  from selenium.webdriver.common.by import By

  canvases = driver.find_elements(By.TAG_NAME, "canvas")
  assert canvases, "the page holds no <canvas>"
  rect = max((c.rect for c in canvases), key=lambda r: r["width"] * r["height"])
  shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))
  ratio = shot.shape[1] / driver.execute_script("return window.innerWidth")
  x0, y0 = int(rect["x"] * ratio), int(rect["y"] * ratio)
  x1, y1 = int((rect["x"] + rect["width"]) * ratio), int((rect["y"] + rect["height"]) * ratio)
  return shot[y0:y1, x0:x1]


def _coloured(pixels: np.ndarray) -> int:
  """Pixels with a clear hue (the meshes; the background and grid are white / grey)."""
  p = pixels.astype(int)
  return int(np.sum(p.max(-1) - p.min(-1) > 40))


def _save(pixels, name) -> pathlib.Path:
  from PIL import Image

  path = SHOT_DIR / name
  Image.fromarray(pixels).save(path)
  return path


def _poll(predicate, timeout: float, interval: float = 0.5):
  deadline = time.monotonic() + timeout
  while True:
    value = predicate()
    if value is not None or time.monotonic() > deadline:
      return value
    time.sleep(interval)


@pytest.mark.timeout(180)
def test_viewer_in_headless_chromium(body, tmp_path):
  path = save_results(tmp_path / "results.npz", make_results(body))
  driver = _webdriver(tmp_path / "chromium")
  viewer = None
  try:
    viewer = app.serve(path, port=_free_port())
    assert viewer.server.get_host() == "127.0.0.1"
    assert viewer.num_iterations == NUM_ITERATIONS
    assert viewer.current_iteration == NUM_ITERATIONS - 1  # the final result by default
    assert set(viewer.mesh_handles) == {0, 1}
    driver.get(viewer.url)
    assert "viser" in (driver.title + driver.page_source).lower()

    def rendered():
      pixels = _canvas_pixels(driver)
      return pixels if _coloured(pixels) > 800 else None

    first = _poll(rendered, 30.0)
    assert first is not None, "the 3D canvas never showed the meshes"
    _save(first, "viewer_shot_frame0.png")
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 200  # not blank: shaded meshes

    viewer.frame_slider.value = 3  # server-side, as the timeline would
    np.testing.assert_allclose(
      viewer.mesh_handles[1].vertices,
      meshes.camera_to_world(viewer.vertices(None)[meshes.row_table(viewer.results)[(3, 1)]]),
    )

    def moved():
      pixels = _canvas_pixels(driver)
      if pixels.shape != first.shape:
        return None
      changed = np.any(np.abs(pixels.astype(int) - first.astype(int)) > 30, axis=-1)
      return pixels if changed.mean() > 0.01 else None

    second = _poll(moved, 20.0)
    assert second is not None, "the canvas did not change after moving the timeline"
    _save(second, "viewer_shot_frame3.png")

    viewer.frame_slider.value = 2  # track 1 is absent at frame 2
    assert not viewer.mesh_handles[1].visible and viewer.mesh_handles[0].visible
    viewer.iteration_slider.value = 0  # the initial estimate
    np.testing.assert_allclose(
      viewer.mesh_handles[0].vertices,
      meshes.camera_to_world(viewer.vertices(0)[meshes.row_table(viewer.results)[(2, 0)]]),
    )

    # The image panel: the reprojected meshes over grey (no frames in this results file).
    image = viewer.frame_image(3, NUM_ITERATIONS - 1)
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert np.any(image != overlay.BACKGROUND, axis=-1).mean() > 0.03
    _save(image, "viewer_panel_frame3.png")
  finally:
    driver.quit()
    if viewer is not None:
      viewer.stop()


def test_results_roundtrip_keeps_refinement(body, tmp_path):
  path = save_results(tmp_path / "r.npz", make_results(body))
  assert meshes.num_iterations(load_results(path)) == NUM_ITERATIONS
