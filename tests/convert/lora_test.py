"""LoRA checkpoint converter: three key layouts, checked by merging in torch and in jhmr."""

import jax
import numpy as np
import pytest

from jhmr.convert import diffusers_unet
from jhmr.convert.common import ConversionError
from jhmr.convert.lora import convert_lora_state_dict
from jhmr.models import lora as L

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TINY = dict(
  sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
  cross_attention_dim=24, attention_head_dim=8, norm_num_groups=8,
)  # fmt: skip
BLOCK = "down_blocks.0.attentions.0.transformer_blocks.0"
MODULES = [f"{BLOCK}.attn1.to_q", f"{BLOCK}.attn2.to_k", f"{BLOCK}.attn2.to_out.0",
           f"{BLOCK}.ff.net.0.proj"]  # fmt: skip


@pytest.fixture(scope="module")
def unet():
  torch.manual_seed(0)
  ref = diffusers.UNet2DConditionModel(**TINY)
  config = diffusers_unet.unet_config_from_diffusers(dict(ref.config))
  sd = {k: v.clone() for k, v in ref.state_dict().items()}
  return sd, config, diffusers_unet.convert_unet_state_dict(sd, config)


def _factors(sd, rank=3, seed=1):
  g = torch.Generator().manual_seed(seed)
  out = {}
  for m in MODULES:
    w = sd[f"{m}.weight"]
    out[m] = (
      torch.randn(rank, w.shape[1], generator=g),
      torch.randn(w.shape[0], rank, generator=g),
    )
  return out


def _keys(layout, m):
  if layout == "attn_procs":
    block, proj = (
      m.rsplit(".", 1) if not m.endswith("to_out.0") else (m[: -len(".to_out.0")], "to_out")
    )
    return f"{block}.processor.{proj}_lora.down.weight", f"{block}.processor.{proj}_lora.up.weight"
  if layout == "peft":
    return f"unet.{m}.lora_A.weight", f"unet.{m}.lora_B.weight"
  return f"{m}.lora_down.weight", f"{m}.lora_up.weight"


@pytest.mark.parametrize("layout", ["attn_procs", "peft", "cloneofsimo"])
def test_converted_lora_merges_like_torch(unet, layout):
  sd, config, base = unet
  factors = _factors(sd)
  modules = MODULES[:3] if layout == "attn_procs" else MODULES  # processors: attention only
  ckpt, merged_sd = {}, dict(sd)
  for m in modules:
    down, up = factors[m]
    kd, ku = _keys(layout, m)
    ckpt[kd], ckpt[ku] = down, up
    merged_sd[f"{m}.weight"] = sd[f"{m}.weight"] + 0.5 * up @ down
  if layout == "peft":  # alpha / r = 1.5 / 3
    ckpt.update({f"unet.{m}.alpha": torch.tensor(1.5) for m in modules})
  lora, scale = convert_lora_state_dict(ckpt, base)
  if layout != "peft":
    assert scale == 1.0
    scale = 0.5
  assert scale == 0.5
  want = diffusers_unet.convert_unet_state_dict(merged_sd, config)
  got = L.merge(base, lora, scale)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got, want)


def test_strict(unet):
  sd, _, base = unet
  down, up = _factors(sd)[MODULES[0]]
  kd, ku = _keys("peft", MODULES[0])
  with pytest.raises(ConversionError, match="needs both"):
    convert_lora_state_dict({kd: down}, base)
  with pytest.raises(ConversionError, match="unexpected"):
    convert_lora_state_dict({kd: down, ku: up, "text_encoder.x.weight": down}, base)
  with pytest.raises(ConversionError, match="vs kernel"):
    convert_lora_state_dict({kd: down, ku: up[:5]}, base)
  with pytest.raises(ConversionError, match="no Dense kernel"):
    convert_lora_state_dict({"down_blocks.0.nothing.lora_A.weight": down,
                             "down_blocks.0.nothing.lora_B.weight": up}, base)  # fmt: skip
