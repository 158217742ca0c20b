"""jhmr.models: Flax linen modules. `MODELS` maps config names to module classes."""

from jhmr.models.score_net import ScoreNet

MODELS = {
  "score_net": ScoreNet,
}
