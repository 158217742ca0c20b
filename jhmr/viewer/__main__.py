"""`python -m jhmr.viewer RESULTS`: serves the web viewer of a results file until Ctrl-C.

The server binds to 127.0.0.1:8080 by default. On a remote machine, forward the port:
`ssh -L 8080:localhost:8080 user@host`, then open http://localhost:8080 in a local browser.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m jhmr.viewer",
    description="Web viewer (viser) of a jhmr results file: meshes of every track over time, "
    "the input image with the reprojected meshes and the guidance iterations of a refinement.",
    epilog="Remote machine: ssh -L 8080:localhost:8080 user@host, then open "
    "http://localhost:8080 locally.",
  )
  parser.add_argument("results", help="results file (.npz) written by jhmr")
  parser.add_argument(
    "--frames", default=None, help="input video file or image directory (default: metadata)"
  )
  parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
  parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
  parser.add_argument(
    "--body-model", default=None, help="body model name or path (default: metadata)"
  )
  return parser


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  from jhmr.viewer.app import serve

  try:
    viewer = serve(
      args.results,
      host=args.host,
      port=args.port,
      frames=args.frames,
      body_model=args.body_model,
    )
  except (FileNotFoundError, ValueError, OSError) as e:  # ResultsFileError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 1
  # A parent may have left SIGINT ignored (children inherit that); Ctrl-C must stop the viewer.
  signal.signal(signal.SIGINT, signal.default_int_handler)
  print(f"jhmr viewer: {viewer.url} (Ctrl-C to stop)", flush=True)
  try:
    while True:
      time.sleep(1.0)
  except KeyboardInterrupt:
    pass
  finally:
    viewer.stop()
  return 0


if __name__ == "__main__":
  sys.exit(main())
