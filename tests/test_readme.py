"""The README says nothing untested: its two set-up commands, its ``.vpy`` example, the convert
line of "Use the authors' model" (against the test fixture), the ``upscale()`` option table
(against the signature and docstring), and every link inside the repository (README and docs/)."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def _text() -> str:
    return README.read_text()


def _blocks(lang: str) -> list[str]:
    """The README's fenced code blocks of ``lang`` (indented ones too)."""
    return [m.group(2) for m in re.finditer(r"^( *)```" + lang + r"\n(.*?)^\1```", _text(), re.M | re.S)]


def _section(title: str) -> str:
    text = _text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end > 0 else None]


# -- the option table ------------------------------------------------------------------------------
def _option_rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in _section("`upscale()` options").splitlines():
        m = re.match(r"\| `(\w+)` \| `([^`]*)` \| (.+) \|$", line)
        if m:
            rows.append(m.groups())
    return rows


def test_option_table_matches_upscale():
    """One row per parameter of ``upscale`` (in the signature's order), its default as the
    signature has it, each one named in the docstring, each description one short line."""
    from vsdloral import upscale

    params = [p for p in inspect.signature(upscale).parameters.values() if p.name != "clip"]
    rows = _option_rows()
    assert [r[0] for r in rows] == [p.name for p in params]
    for (name, default, what), p in zip(rows, params):
        assert default == repr(p.default), (name, default, p.default)
        assert re.search(rf"``{name}(``|=)", upscale.__doc__), f"{name} is not in upscale's docstring"
        assert len(what) <= 110, name


# -- links -----------------------------------------------------------------------------------------
def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.M | re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def _md_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_links_inside_the_repository_resolve():
    bad = []
    checked = 0
    for md in _md_files():
        text = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.M | re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto: ...
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            checked += 1
            if not dest.exists():
                bad.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert checked > 20
    assert not bad, bad


def test_link_checker_sees_a_broken_link():
    """The checker's own pieces: a missing heading and a link pattern with nested brackets."""
    assert "the-authors-computation-and-ours" in _anchors(ROOT / "docs" / "authors-computation.md")
    assert "no-such-heading" not in _anchors(ROOT / "docs" / "authors-computation.md")
    assert LINK.findall("![a [b] c](x/y.png) and [d](z.md#e) but not [f] (g)") == ["x/y.png", "z.md#e"]


# -- the two commands ------------------------------------------------------------------------------
def test_two_setup_commands():
    """The first sh block is exactly `make demo` and `make test`; the Makefile has both, CI runs
    `make test`, and `make demo` runs examples/demo.sh (run below)."""
    first = _blocks("sh")[0]
    assert [ln.split("#")[0].strip() for ln in first.strip().splitlines()] == ["make demo", "make test"]
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: setup\n(\t.*\n)*\t\$\(PY\) -m pytest", make, re.M)
    assert re.search(r"^demo: setup\n(\t.*\n)*\tbash examples/demo.sh", make, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is installed by .ci/system-deps (make test)")
def test_make_demo_script_runs(tmp_path):
    """What `make demo` runs after set-up, on 1 s of its clip at a small LQ size."""
    out = tmp_path / "demo.mkv"
    env = {**os.environ, "DEMO_SECONDS": "1", "DEMO_LQ": "64x36", "DEMO_OUT": str(out),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", str(ROOT / "examples" / "demo.sh")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "demo: backend torch: set by VSDLORAL_BACKEND" in r.stderr  # the suite pins torch (conftest.py)
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
                            "stream=width,height,nb_read_frames", "-of", "csv=p=0", str(out)],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "256,144,25"


# -- the .vpy example and the authors' model --------------------------------------------------------
def _tiny_clip(path: Path, n: int = 2) -> None:
    """A small YUV clip written by VapourSynth itself (no ffmpeg): a y4m file that BestSource opens."""
    import numpy as np
    import vapoursynth as vs

    rng = np.random.default_rng(0)
    w, h = 32, 24
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(n):
            f.write(b"FRAME\n")
            f.write(rng.integers(16, 235, size=w * h * 3 // 2, dtype=np.uint8).tobytes())


def _run_vpy(code: str, src: Path):
    """Run a README script with its input file name pointed at ``src``; its output node."""
    import vapoursynth as vs

    code = code.replace('"input.mkv"', repr(str(src)))
    vs.clear_outputs()
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "__vapoursynth__"})
        node = vs.get_output(0)
        node = node.clip if hasattr(node, "clip") else node
        node.get_frame(node.num_frames - 1)
        return node
    finally:
        vs.clear_outputs()


def test_vpy_example_runs(tmp_path):
    (code,) = _blocks("python")
    src = tmp_path / "input.y4m"
    _tiny_clip(src)
    node = _run_vpy(code, src)
    assert (node.width, node.height, node.num_frames) == (128, 96, 2)


def test_authors_model_convert_line_runs(tmp_path, monkeypatch):
    """Step 3's command, verbatim, in a folder holding a fixture ``model.pkl`` and an SD 2.x single
    file named as the real one (the tiny model's configs stand in for the packaged SD 2.1-base
    ones); then the README's .vpy with step 3's ``model=``."""
    from authors_format import (base_unet_from_checkpoint, make_authors_checkpoint, make_configs, make_sd_base,
                                perturb_norms, to_ldm)
    from safetensors.torch import save_file

    import vsdloral.sd_base as sdb
    from vsdloral.cli import main

    lines = [ln.strip() for b in _blocks("sh") for ln in b.splitlines() if ln.strip().startswith("vsdloral convert")]
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0])
    assert "model.pkl" in argv and "v2-1_512-ema-pruned.safetensors" in argv

    sd = make_sd_base(tmp_path / "sd", seed=1)
    ck = perturb_norms(make_authors_checkpoint(tmp_path / "model.pkl", seed=3))
    ldm = to_ldm(sd, base_unet_from_checkpoint(sd, ck))
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(tmp_path / "v2-1_512-ema-pruned.safetensors"))
    monkeypatch.setattr(sdb, "CONFIG_DIR", make_configs(sd, tmp_path / "configs"))
    monkeypatch.chdir(tmp_path)
    assert main(argv[1:]) == 0
    out = Path(argv[argv.index("-o") + 1])
    assert out.is_file()

    use = re.search(r"`(vsdloral\.upscale\(clip, 4, model=\"[^\"]+\"\))`", _section("Use the authors' model")).group(1)
    (code,) = _blocks("python")
    code = re.sub(r"vsdloral\.upscale\(clip, 4\)", use, code)
    assert str(out) in code
    _tiny_clip(tmp_path / "input.y4m")
    node = _run_vpy(code, tmp_path / "input.y4m")
    assert (node.width, node.height) == (128, 96)
