"""``vsdloral convert``: merging, provenance and every user-fixable error."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from authors_format import make_authors_checkpoint, make_sd_base, random_bpp
from vsdloral.cli import main
from vsdloral.convert import ConvertError, convert, load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`")


@pytest.fixture(scope="module")
def sd_base(tmp_path_factory):
    return make_sd_base(tmp_path_factory.mktemp("sd") / "sd-base", seed=1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Different ranks per branch, so per-adapter scaling (alpha 8 / rank) is exercised."""
    return make_authors_checkpoint(tmp_path_factory.mktemp("ck") / "model.pkl", seed=3,
                                   rank_quality=4, rank_consistency=2)


@pytest.fixture(scope="module")
def converted(sd_base, ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "m.safetensors"
    assert main(["convert", "--sd-base", str(sd_base), "--checkpoint", str(ckpt), "-o", str(out),
                 "--dtype", "fp32"]) == 0
    return out


def _run_err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    line = [ln for ln in err if ln.startswith("vsdloral convert: error:")]
    assert len(line) == 1, err
    return line[0]


def _argv(sd, ck, out, *extra):
    return ["convert", "--sd-base", str(sd), "--checkpoint", str(ck), "-o", str(out), *extra]


# -- what the converter computes ------------------------------------------------------------------
def test_merged_weights_follow_the_lora_formula(converted, ckpt):
    """Each merged weight = base + sum over its adapters of (8 / rank) * B @ A (PEFT defaults)."""
    from vsdloral.model.weights import DLoRALModel

    model = DLoRALModel.load(converted)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    sd = raw["state_dict_unet"]
    unet_sd = model.unet.state_dict()
    checked = 0
    for name in ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                 "up_blocks.1.attentions.0.proj_out", "mid_block.attentions.0.transformer_blocks.0.ff.net.2"]:
        w = sd[f"{name}.base_layer.weight"].clone()
        for key in sd:
            if key.startswith(f"{name}.lora_A."):
                adapter = key.split(".")[-2]
                rank = raw["lora_rank_unet_" + adapter.rsplit("_", 1)[1]]
                w += (8 / rank) * sd[f"{name}.lora_B.{adapter}.weight"] @ sd[key]
                checked += 1
        assert torch.allclose(unet_sd[f"{name}.weight"], w, atol=1e-6), name
        if f"{name}.base_layer.bias" in sd:
            assert torch.equal(unet_sd[f"{name}.bias"], sd[f"{name}.base_layer.bias"])
    assert checked == 6  # each of the three modules carries a quality and a consistency adapter
    # conv layers (conv_in with 8 input channels carries encoder adapters)
    assert unet_sd["conv_in.weight"].shape[1] == 8
    assert not torch.allclose(unet_sd["conv_in.weight"], sd["conv_in.base_layer.weight"])
    # keys match a plain UNet: no PEFT names left
    assert not any("lora" in k or "base_layer" in k for k in unet_sd)


def test_cfr_and_spynet_taken_from_bpp(converted, ckpt):
    from vsdloral.model.weights import DLoRALModel

    model = DLoRALModel.load(converted)
    bpp = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict_bpp"]
    assert torch.equal(model.cfr.key_conv.weight, bpp["cross_attn_module.key_conv.weight"])
    assert torch.equal(model.spynet.basic_module[5].basic_module[4].conv.bias,
                       bpp["spynet.basic_module.5.basic_module.4.conv.bias"])
    cfg = model.meta.cfr
    assert (cfg.heads, cfg.head_dim, cfg.latent_channels, cfg.temperature) == (2, 16, 4, 3000.0)


def test_info_shows_provenance(converted, ckpt, sd_base, capsys):
    assert main(["info", str(converted)]) == 0
    info = json.loads(capsys.readouterr().out)
    prov = info["provenance"]
    assert prov["checkpoint"] == "model.pkl"
    assert prov["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert prov["sd_base"] == str(sd_base.resolve())
    assert prov["converter_version"]
    assert prov["lora_rank_unet_quality"] == 4 and prov["lora_rank_unet_consistency"] == 2
    assert info["unet_config"]["in_channels"] == 8
    assert info["vae_config"]["scaling_factor"] == pytest.approx(0.18215)
    assert info["scale"] == "4" and info["prompt"] == ", ,"  # the authors' string with no tags, no prompt
    # what inference needs to compute as the authors: their latent tiles and their input kernel
    assert (info["tile"], info["tile_overlap"], info["kernel"]) == (768, 256, "pil")
    assert info["branches"] == ["quality", "consistency"] and prov["branches"] == info["branches"]


def test_prompt_and_dtype(sd_base, ckpt, tmp_path):
    from vsdloral.model.weights import DLoRALModel

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    convert(sd_base, ckpt, a, prompt="hello dog", dtype="fp16", scale=2)
    convert(sd_base, ckpt, b, prompt="")
    ma, mb = DLoRALModel.load(a), DLoRALModel.load(b)
    assert ma.meta.prompt == ", hello dog," and ma.meta.scale == 2
    assert ma.unet.conv_in.weight.dtype == torch.float16
    assert ma.prompt_embeds.shape == mb.prompt_embeds.shape == (1, 77, 32)
    assert (ma.prompt_embeds.float() - mb.prompt_embeds).abs().max() > 1e-3


def test_prompt_is_composed_as_the_authors(sd_base, ckpt, tmp_path, monkeypatch):
    """``--tags T --prompt P`` encodes the authors' ``f"{T}, {P},"`` (their DAPE tags, then the user
    prompt), and that exact string reaches the text encoder."""
    import vsdloral.convert as conv
    from vsdloral.model.weights import read_metadata

    seen = []
    encode = conv.encode_prompt
    monkeypatch.setattr(conv, "encode_prompt", lambda sd, text: seen.append(text) or encode(sd, text))
    out = tmp_path / "t.safetensors"
    assert main(_argv(sd_base, ckpt, out, "--tags", "cat, dog", "--prompt", "hello")) == 0
    assert seen == ["cat, dog, hello,"]
    md = read_metadata(out)
    assert md["prompt"] == "cat, dog, hello,"
    assert md["provenance"]["tags"] == "cat, dog" and md["provenance"]["user_prompt"] == "hello"
    assert conv.compose_prompt() == ", ," and conv.compose_prompt("a", "") == "a, ,"


def _authors_unet(ckpt, weights):
    """The authors' UNet from the checkpoint with the six adapters at ``weights`` (their order:
    consistency encoder/decoder/others, then quality), as ``set_weights_and_activate_adapters``."""
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    from authors_format import dlora_unet_config
    from vsdloral.convert import build_lora_unet

    unet = build_lora_unet(dlora_unet_config(), torch.load(ckpt, map_location="cpu", weights_only=True))
    names = [f"default_{g}_{b}" for b in ("consistency", "quality") for g in ("encoder", "decoder", "others")]
    set_weights_and_activate_adapters(unet, names, weights)
    return unet


@torch.no_grad()
def test_branches_consistency_is_the_authors_stage_0(sd_base, ckpt, converted, tmp_path, capsys):
    """``--branches consistency``: the merged UNet computes what the authors' UNet computes with
    adapter weights 1, 1, 1, 0, 0, 0 (their ``--stages 0``), and differs from both branches merged;
    the metadata and ``vsdloral info`` say which branches the file holds."""
    from vsdloral.model.weights import DLoRALModel

    out = tmp_path / "c.safetensors"
    assert main(_argv(sd_base, ckpt, out, "--branches", "consistency")) == 0
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["branches"] == ["consistency"]
    assert info["provenance"]["adapters_merged"] == [f"default_{g}_consistency" for g in ("encoder", "decoder", "others")]
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(1, 8, 8, 12, generator=g), torch.randn(1, 77, 32, generator=g)
    t = torch.tensor([1])
    ours = DLoRALModel.load(out).unet.eval()(x, t, encoder_hidden_states=emb).sample
    stage0 = _authors_unet(ckpt, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]).eval()(x, t, encoder_hidden_states=emb).sample
    both = DLoRALModel.load(converted).unet.eval()(x, t, encoder_hidden_states=emb).sample
    assert (ours - stage0).abs().max() < 1e-5
    assert (both - stage0).abs().max() > 1e-3  # the quality adapters do contribute: the test sees them
    assert "unknown branch detail" in _run_err(capsys, _argv(sd_base, ckpt, tmp_path / "x.safetensors",
                                                          "--branches", "detail"))


# -- errors ----------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unsafe_pickle_is_refused_not_executed(sd_base, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pkl"
    torch.save({"state_dict_unet": {}, "payload": _Evil(marker)}, evil)
    out = tmp_path / "o.safetensors"
    line = _run_err(capsys, _argv(sd_base, evil, out))
    assert "weights-only" in line and "refusing" in line
    assert not marker.exists()
    assert not out.exists()
    with pytest.raises(ConvertError):
        load_checkpoint(evil)
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    marker2 = tmp_path / "pwned2"
    torch.save({"payload": _Evil(marker2)}, tmp_path / "evil2.pkl")
    torch.load(tmp_path / "evil2.pkl", weights_only=False)
    assert marker2.exists()


def test_not_a_checkpoint(sd_base, tmp_path, capsys):
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"this is not a pickle at all")
    assert "not a readable torch checkpoint" in _run_err(capsys, _argv(sd_base, junk, tmp_path / "o.st"))
    lst = tmp_path / "list.pkl"
    torch.save([1, 2], lst)
    assert "expected the DLoRAL checkpoint dict" in _run_err(capsys, _argv(sd_base, lst, tmp_path / "o.st"))
    assert "checkpoint not found" in _run_err(capsys, _argv(sd_base, tmp_path / "nope.pkl", tmp_path / "o.st"))
    assert not list(tmp_path.glob("o.st*"))


def test_missing_top_level_key(sd_base, tmp_path, capsys):
    ck = make_authors_checkpoint(tmp_path / "m.pkl", unet_lora_others_modules_consistency=None)
    line = _run_err(capsys, _argv(sd_base, ck, tmp_path / "o.safetensors"))
    assert "unet_lora_others_modules_consistency" in line


def test_missing_cfr_keys_are_listed(sd_base, tmp_path, capsys):
    bpp = random_bpp()
    del bpp["cross_attn_module.threshold_fc.weight"]
    del bpp["spynet.basic_module.3.basic_module.2.conv.bias"]
    ck = make_authors_checkpoint(tmp_path / "m.pkl", state_dict_bpp=bpp)
    line = _run_err(capsys, _argv(sd_base, ck, tmp_path / "o.safetensors"))
    assert "cross_attn_module.threshold_fc.weight" in line
    assert "spynet.basic_module.3.basic_module.2.conv.bias" in line
    assert not (tmp_path / "o.safetensors").exists()


def test_wrong_cfr_shapes(sd_base, tmp_path, capsys):
    bpp = random_bpp()
    bpp["spynet.basic_module.0.basic_module.0.conv.weight"] = torch.randn(32, 8, 5, 5)
    ck = make_authors_checkpoint(tmp_path / "m.pkl", state_dict_bpp=bpp)
    line = _run_err(capsys, _argv(sd_base, ck, tmp_path / "o.safetensors"))
    assert "spynet.basic_module.0.basic_module.0.conv.weight" in line and "(32, 8, 5, 5)" in line
    bpp = random_bpp()
    bpp["cross_attn_module.proj_out.weight"] = torch.randn(4, 31, 1, 1)
    ck = make_authors_checkpoint(tmp_path / "m2.pkl", state_dict_bpp=bpp)
    assert "cross_attn_module.proj_out.weight" in _run_err(capsys, _argv(sd_base, ck, tmp_path / "o.safetensors"))
    bpp = random_bpp()  # an RGB-input query conv (another CFR variant) is named, not half-loaded
    bpp["cross_attn_module.query_conv.weight"] = torch.randn(32, 3, 1, 1)
    ck = make_authors_checkpoint(tmp_path / "m3.pkl", state_dict_bpp=bpp)
    line = _run_err(capsys, _argv(sd_base, ck, tmp_path / "o.safetensors"))
    assert "cross_attn_module.query_conv.weight (32, 3, 1, 1) (expected (32, 4, 1, 1))" in line
    assert not (tmp_path / "o.safetensors").exists()


def test_unet_rank_mismatch_and_missing_tensors(sd_base, tmp_path, capsys):
    ck = make_authors_checkpoint(tmp_path / "m.pkl", lora_rank_unet_quality=8)  # tensors are rank 4
    line = _run_err(capsys, _argv(sd_base, ck, tmp_path / "o.safetensors"))
    assert "state_dict_unet" in line and "wrong shape" in line and "lora_A.default_" in line
    raw = torch.load(ck, weights_only=True)
    raw["lora_rank_unet_quality"] = 4
    del raw["state_dict_unet"]["conv_in.base_layer.weight"]
    torch.save(raw, tmp_path / "m2.pkl")
    line = _run_err(capsys, _argv(sd_base, tmp_path / "m2.pkl", tmp_path / "o.safetensors"))
    assert "missing" in line and "conv_in.base_layer.weight" in line
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("remove", ["vae", "unet/config.json", "text_encoder", "tokenizer", "ALL"])
def test_missing_sd_base_parts(sd_base, ckpt, tmp_path, capsys, remove):
    broken = tmp_path / "sd"
    shutil.copytree(sd_base, broken)
    if remove == "ALL":
        shutil.rmtree(broken)
    elif (broken / remove).is_dir():
        shutil.rmtree(broken / remove)
    else:
        (broken / remove).unlink()
    line = _run_err(capsys, _argv(broken, ckpt, tmp_path / "o.safetensors"))
    assert (remove.split("/")[0] in line) if remove != "ALL" else "is not a folder" in line
    assert not (tmp_path / "o.safetensors").exists()


def test_existing_output_needs_force(sd_base, ckpt, converted, tmp_path, capsys):
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old contents")
    line = _run_err(capsys, _argv(sd_base, ckpt, out))
    assert "--force" in line
    assert out.read_bytes() == b"old contents"
    assert main(_argv(sd_base, ckpt, out, "--force")) == 0
    from vsdloral.model.weights import read_metadata

    assert read_metadata(out)["provenance"]["checkpoint"] == "model.pkl"
    assert [p.name for p in tmp_path.iterdir()] == ["o.safetensors"]  # no temp files left


def test_unwritable_output(sd_base, ckpt, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    line = _run_err(capsys, _argv(sd_base, ckpt, blocker / "o.safetensors"))
    assert "cannot write" in line
    assert "is a folder" in _run_err(capsys, _argv(sd_base, ckpt, tmp_path))
    assert "scale" in _run_err(capsys, _argv(sd_base, ckpt, tmp_path / "s.safetensors", "--scale", "0"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
