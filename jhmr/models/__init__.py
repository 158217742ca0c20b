"""jhmr.models: Flax linen modules. `MODELS` maps config names to module classes."""

from jhmr.models.clip_text import CLIPTextModel
from jhmr.models.controlnet import ControlNet
from jhmr.models.hmr import HMR
from jhmr.models.score_net import ScoreNet
from jhmr.models.unet import UNet
from jhmr.models.vae import AutoencoderKL

MODELS = {
  "clip_text": CLIPTextModel,
  "controlnet": ControlNet,
  "hmr": HMR,
  "score_net": ScoreNet,
  "unet": UNet,
  "vae": AutoencoderKL,
}
