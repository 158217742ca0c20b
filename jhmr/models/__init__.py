"""jhmr.models: Flax linen modules. `MODELS` maps config names to module classes."""

from jhmr.models.clip_text import CLIPTextModel
from jhmr.models.controlnet import ControlNet
from jhmr.models.hmr import HMR
from jhmr.models.hmr2 import HMR2
from jhmr.models.hrnet import HRNet
from jhmr.models.pare import Pare
from jhmr.models.score_net import ScoreNet
from jhmr.models.unet import UNet
from jhmr.models.vae import AutoencoderKL
from jhmr.models.vit import ViT
from jhmr.models.vitpose import VitPose
from jhmr.models.vposer import VPoser

MODELS = {
  "clip_text": CLIPTextModel,
  "controlnet": ControlNet,
  "hmr": HMR,
  "hmr2": HMR2,
  "hrnet": HRNet,
  "pare": Pare,
  "score_net": ScoreNet,
  "unet": UNet,
  "vae": AutoencoderKL,
  "vit": ViT,
  "vitpose": VitPose,
  "vposer": VPoser,
}
