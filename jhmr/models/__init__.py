"""jhmr.models: Flax linen modules. `MODELS` maps config names to module classes."""

from jhmr.models.hmr import HMR
from jhmr.models.score_net import ScoreNet

MODELS = {
  "hmr": HMR,
  "score_net": ScoreNet,
}
