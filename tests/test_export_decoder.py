"""export_decoder records the init's inference settings explicitly (tiles, kernel), keeps a converted
init's ``converted`` flag and records the branches actually merged (issue #29)."""

from __future__ import annotations

import pytest
import torch
from decoder_stage_setup import TINY_DECODER

from training import config as config_mod
from training.decoder_task import decoder_config, export_decoder
from vsdloral.model.decoders import build_decoder
from vsdloral.model.weights import DLoRALModel, read_metadata


@pytest.fixture(scope="module")
def converted_init(tmp_path_factory):
    """The authors'-format fixture converted with the consistency branch only (C-LoRA), saved the
    way files converted before tiles and kernels were recorded are: tile and kernel empty."""
    from authors_format import make_authors_checkpoint, make_sd_base

    from vsdloral.convert import convert

    root = tmp_path_factory.mktemp("conv")
    sd, ck = make_sd_base(root / "sd", seed=1), make_authors_checkpoint(root / "model.pkl", seed=2)
    convert(sd, ck, root / "new.safetensors", branches=("consistency",), force=True)
    m = DLoRALModel.load(root / "new.safetensors")
    m.meta.tile = m.meta.tile_overlap = m.meta.kernel = None
    m.save(root / "old.safetensors")
    return root / "new.safetensors", root / "old.safetensors"


def _state(init) -> dict:
    cfg = config_mod.build_config("tiny", None, None)
    cfg["decoder"] = {"init": str(init)}
    config_mod.set_dotted(cfg, "model.decoder", TINY_DECODER)
    meta = DLoRALModel.load(init).meta
    dc = decoder_config(cfg, meta.latent_channels, meta.vae_factor)
    torch.manual_seed(0)
    return {"config": cfg, "step": 3, "task": {"decoder_config": dc, "decoder": build_decoder(dc).state_dict()}}


@pytest.mark.parametrize("which", ["recorded", "unrecorded"])
def test_converted_init_keeps_its_inference_rules(converted_init, tmp_path, which):
    new, old = converted_init
    init = new if which == "recorded" else old
    assert read_metadata(init)["tile"] == (768 if which == "recorded" else None)
    out = tmp_path / "m.safetensors"
    export_decoder(_state(init), out)
    md = read_metadata(out)
    assert (md["tile"], md["tile_overlap"], md["kernel"]) == (768, 256, "pil")  # the authors' 96/32 latents, PIL
    assert md["provenance"]["converted"] is True and md["provenance"]["source"] == "vsdloral-train"
    assert md["branches"] == ["consistency"]  # the init's, not both
    meta = DLoRALModel.load(out).meta
    assert meta.converted and meta.inference_tiling() == (768, 256) and meta.inference_kernel() == "pil"
    # the joint stage merges its D-LoRA (quality) into the init's UNet
    joint = tmp_path / "joint.safetensors"
    export_decoder(_state(init), joint, unet=DLoRALModel.load(init).unet, stage="joint")
    assert read_metadata(joint)["branches"] == ["quality", "consistency"]


def test_init_trained_here_records_dense_and_torch(tiny_model_path, tmp_path):
    """An init that records neither (as the bundled file): dense tiles and the torch kernel, written
    out; not converted."""
    m = DLoRALModel.load(tiny_model_path)
    m.meta.tile = m.meta.kernel = None
    init = tmp_path / "init.safetensors"
    m.save(init)
    out = tmp_path / "m.safetensors"
    export_decoder(_state(init), out)
    md = read_metadata(out)
    assert (md["tile"], md["kernel"]) == (0, "torch") and md["provenance"]["converted"] is False
    assert not DLoRALModel.load(out).meta.converted
