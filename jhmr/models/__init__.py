"""jhmr.models: Flax linen modules. `MODELS` maps config names to module classes."""

from jhmr.models.controlnet import ControlNet
from jhmr.models.hmr import HMR
from jhmr.models.score_net import ScoreNet
from jhmr.models.unet import UNet

MODELS = {
  "controlnet": ControlNet,
  "hmr": HMR,
  "score_net": ScoreNet,
  "unet": UNet,
}
