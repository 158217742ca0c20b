"""The viser web viewer of a results file: meshes of every track over time, the input image with
the reprojected meshes, and the guidance iterations of a refinement run.

The server binds to 127.0.0.1 by default (nothing is exposed on the network). From another
machine, forward the port over SSH and open the page locally:

    ssh -L 8080:localhost:8080 user@host     # then browse http://localhost:8080

Scene: the viewer's world frame is the camera frame (OpenCV) rotated 180 degrees about x (y up,
the camera at the origin looking down -z; see `jhmr.viewer.meshes`); the camera is drawn as a
frustum and the initial view looks at the people from just behind it.
"""

from __future__ import annotations

import collections
import os
import pathlib
import threading
import time

import numpy as np

from jhmr.render import people
from jhmr.viewer import meshes as meshes_lib
from jhmr.viewer import overlay as overlay_lib

IMAGE_CACHE_SIZE = 512  # rendered panel images kept (<= 640 px: under 1 MB each)
HIDDEN_Z = -10.0  # camera-frame z of placeholder meshes (behind the camera: not rasterised)


class Viewer:
  """A running viser server for one `Results` (non-blocking; call `stop()` when done).

  Attributes:
    server: the `viser.ViserServer`.
    frames: [T] sorted distinct frame indices of the results.
    track_ids: [K] sorted track ids.
    num_iterations: I, guidance iterations stored (0: not a refinement run).
    frame_slider, playing, fps, iteration_slider (None when I == 0), image: GUI handles.
  """

  def __init__(
    self,
    results,
    body_model,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    frames: str | os.PathLike | None = None,
    max_image_side: int = 640,
    verbose: bool = False,
  ):
    import viser

    self.results, self.body_model = results, body_model
    self.faces = np.asarray(body_model.faces, np.int32)
    self.frames = np.unique(results.frame)
    self.track_ids = results.track_ids
    self.num_iterations = meshes_lib.num_iterations(results)
    self._rows = meshes_lib.row_table(results)
    self._colors = people.person_colors(len(self.track_ids))  # [T, 3] in [0, 1]
    self._vertices: dict[int | None, np.ndarray] = {}  # iteration -> [N, V, 3] camera frame
    # (frame, iteration) -> panel image; least recently used first, at most IMAGE_CACHE_SIZE.
    self._image_cache: collections.OrderedDict[tuple[int, int | None], np.ndarray] = (
      collections.OrderedDict()
    )
    self._lock = threading.RLock()
    self._stop = threading.Event()
    self._render_request: tuple[int, int | None] | None = None
    self._render_wake = threading.Condition(self._lock)
    self._threads: list[threading.Thread] = []

    width, height = (int(x) for x in results.image_size[0])
    self._disp_w, self._disp_h, self._scale = overlay_lib.display_size(
      width, height, max_image_side
    )
    frames = frames if frames is not None else results.metadata.get("frames")
    max_frame = int(self.frames[-1]) + 1 if len(self.frames) else 0
    self._frame_source = overlay_lib.FrameSource(frames, self._disp_w, self._disp_h, max_frame)

    self.server = viser.ViserServer(host=host, port=port, label="jhmr viewer", verbose=verbose)
    try:
      self._build_scene(width, height)
      self._build_gui(results.metadata.get("fps"))
      self._show(self.current_frame, self.current_iteration)
      self._threads = [
        threading.Thread(target=self._play_loop, daemon=True, name="jhmr-viewer-play"),
        threading.Thread(target=self._render_loop, daemon=True, name="jhmr-viewer-render"),
      ]
      for thread in self._threads:
        thread.start()
      self._request_image()
    except BaseException:
      self.server.stop()
      raise

  # -- state ---------------------------------------------------------------------------------

  @property
  def url(self) -> str:
    return f"http://{self.server.get_host()}:{self.server.get_port()}"

  @property
  def current_frame(self) -> int:
    return int(self.frame_slider.value)

  @property
  def current_iteration(self) -> int | None:
    """The shown guidance iteration, or None when the results hold no refinement."""
    return None if self.iteration_slider is None else int(self.iteration_slider.value)

  def vertices(self, iteration: int | None) -> np.ndarray:
    """[N, V, 3] camera-frame vertices of all rows at `iteration` (computed once, cached)."""
    with self._lock:
      if iteration not in self._vertices:
        self._vertices[iteration] = meshes_lib.row_vertices(
          self.results, self.body_model, iteration
        )
      return self._vertices[iteration]

  # -- scene and GUI -------------------------------------------------------------------------

  def _build_scene(self, width: int, height: int) -> None:
    scene = self.server.scene
    scene.set_up_direction("+y")
    k = self.results.intrinsics[0]
    fov = 2.0 * float(np.arctan2(height / 2.0, k[1, 1]))
    scene.add_camera_frustum(
      "/camera",
      fov=fov,
      aspect=width / height,
      scale=0.2,
      thickness=2.0,
      thickness_units="screen",
      color=(60, 60, 60),
      wxyz=meshes_lib.CAMERA_TO_WORLD_WXYZ,
    )
    verts = meshes_lib.camera_to_world(self.vertices(None))
    if len(verts):
      floor = float(verts[..., 1].min())
      centre = verts.reshape(-1, 3).mean(axis=0)
      scene.add_grid(
        "/ground",
        width=20.0,
        height=20.0,
        plane="xz",
        position=(float(centre[0]), floor, float(centre[2])),
      )
      # Behind and above the recording camera (its frustum in view), looking at the people.
      back = -1.5 * centre / max(float(np.linalg.norm(centre)), 1e-6) + np.array([0.0, 0.8, 0.0])
      self.server.initial_camera.position = tuple(float(c) for c in back)
      self.server.initial_camera.look_at = tuple(float(c) for c in centre)
      self.server.initial_camera.up = (0.0, 1.0, 0.0)
      self.server.initial_camera.fov = fov
    rest = np.zeros((self.body_model.num_vertices, 3), np.float32)
    self.mesh_handles = {}
    for index, track in enumerate(self.track_ids.tolist()):
      self.mesh_handles[track] = scene.add_mesh_simple(
        f"/tracks/{track}",
        vertices=rest,
        faces=self.faces,
        color=tuple(int(round(255 * c)) for c in self._colors[index]),
        side="double",
        visible=False,
      )

  def _build_gui(self, fps) -> None:
    gui = self.server.gui
    first, last = (int(self.frames[0]), int(self.frames[-1])) if len(self.frames) else (0, 0)
    gui.add_markdown(
      f"**{len(self.track_ids)} track(s)**, frames {first}..{last}"
      + (f", {self.num_iterations} guidance iterations" if self.num_iterations else "")
    )
    self.frame_slider = gui.add_slider(
      "Frame", min=first, max=max(last, first + 1), step=1, initial_value=first
    )
    self.playing = gui.add_checkbox("Playing", initial_value=False)
    self.fps = gui.add_number("FPS", initial_value=float(fps or 10.0), min=0.5, max=120.0)
    self.iteration_slider = None
    if self.num_iterations:
      last_it = self.num_iterations - 1
      self.iteration_slider = gui.add_slider(
        "Guidance iteration", min=0, max=max(last_it, 1), step=1, initial_value=last_it
      )
      self.iteration_slider.on_update(lambda _: self._on_change())
    blank = np.full((self._disp_h, self._disp_w, 3), overlay_lib.BACKGROUND, np.uint8)
    self.image = gui.add_image(blank, label="Input with reprojected meshes", format="jpeg")
    self.frame_slider.on_update(lambda _: self._on_change())

  def _on_change(self) -> None:
    self._show(self.current_frame, self.current_iteration)
    self._request_image()

  def _show(self, frame: int, iteration: int | None) -> None:
    """Updates the mesh nodes: each track's vertices at `frame`, hidden where it is absent."""
    verts = self.vertices(iteration)
    for track, handle in self.mesh_handles.items():
      row = self._rows.get((frame, track))
      if row is None:
        handle.visible = False
        continue
      handle.vertices = meshes_lib.camera_to_world(verts[row])
      handle.visible = True

  # -- image panel ---------------------------------------------------------------------------

  def frame_image(self, frame: int, iteration: int | None) -> np.ndarray:
    """[H, W, 3] uint8 at display size: the input frame (or grey) with the meshes at `frame`.

    Rendered with jhmr's rasteriser and the row's intrinsics (scaled to the display size);
    cached per (frame, iteration).
    """
    key = (frame, iteration)
    with self._lock:
      if key in self._image_cache:
        self._image_cache.move_to_end(key)
        return self._image_cache[key]
    image = self._frame_source(frame)
    if image is None:
      image = np.full((self._disp_h, self._disp_w, 3), overlay_lib.BACKGROUND, np.uint8)
    verts = self.vertices(iteration)
    rows = [self._rows.get((frame, int(t))) for t in self.track_ids]
    if any(r is not None for r in rows):
      stack = np.full((len(rows), *verts.shape[1:]), 0.0, np.float32)
      stack[..., 2] = HIDDEN_Z
      for i, row in enumerate(rows):
        if row is not None:
          stack[i] = verts[row]
      k = self.results.intrinsics[next(r for r in rows if r is not None)]
      image = overlay_lib.render_overlay(image, stack, self.faces, k, self._colors, self._scale)
    with self._lock:
      self._image_cache[key] = image
      while len(self._image_cache) > IMAGE_CACHE_SIZE:
        self._image_cache.popitem(last=False)
    return image

  def _request_image(self) -> None:
    with self._render_wake:
      self._render_request = (self.current_frame, self.current_iteration)
      self._render_wake.notify()

  def _render_loop(self) -> None:
    while not self._stop.is_set():
      with self._render_wake:
        while self._render_request is None and not self._stop.is_set():
          self._render_wake.wait(timeout=0.5)
        request, self._render_request = self._render_request, None
      if request is None:
        continue
      try:
        image = self.frame_image(*request)
      except Exception as e:  # noqa: BLE001 - keep the server alive; report once per request
        print(f"jhmr.viewer: cannot render frame {request[0]}: {type(e).__name__}: {e}")
        continue
      if request == (self.current_frame, self.current_iteration):
        self.image.image = image

  def _play_loop(self) -> None:
    while not self._stop.is_set():
      if self.playing.value and len(self.frames) > 1:
        frame = self.current_frame + 1
        if frame > int(self.frames[-1]):
          frame = int(self.frames[0])
        self.frame_slider.value = frame
        time.sleep(1.0 / max(float(self.fps.value), 0.5))
      else:
        time.sleep(0.05)

  def stop(self) -> None:
    """Stops playback, the render thread and the server."""
    self._stop.set()
    with self._render_wake:
      self._render_wake.notify_all()
    for thread in self._threads:
      thread.join(timeout=5.0)
    self.server.stop()


def serve(
  results_path: str | os.PathLike,
  *,
  host: str = "127.0.0.1",
  port: int = 8080,
  frames: str | os.PathLike | None = None,
  body_model: str | None = None,
  verbose: bool = False,
) -> Viewer:
  """Starts the viewer of a results file and returns at once (`Viewer.stop()` ends it).

  Args:
    results_path: a `.npz` results file (`jhmr.io.results`).
    host, port: where to bind (127.0.0.1: local only; forward the port over SSH).
    frames: a video file or an image directory; default `metadata["frames"]` (a relative path
      is also tried next to the results file); none: a grey background.
    body_model: a `load_body_model` name or path; default `metadata["body_model"]`.

  Raises:
    FileNotFoundError / jhmr.io.results.ResultsFileError: unreadable results file.
  """
  from jhmr.body import load_body_model
  from jhmr.io.results import load_results

  results = load_results(results_path)
  name = body_model if body_model is not None else results.metadata.get("body_model")
  if frames is None and results.metadata.get("frames"):
    frames = pathlib.Path(results.metadata["frames"])
    if not frames.is_absolute() and not frames.exists():  # relative to the results file
      frames = pathlib.Path(results_path).parent / frames
  return Viewer(
    results, load_body_model(name), host=host, port=port, frames=frames, verbose=verbose
  )
