"""Video encoder choice for ``vsdloral upscale`` (single-process and chunked): x264, x265 or ffv1.

One place says which ffmpeg options each ``--codec`` means, which containers can hold it and what
``--crf``/``--preset`` default to, so both render modes encode the same way and chunk encodes
concatenate without re-encoding (each chunk is a self-contained stream with the same settings).
"""

from __future__ import annotations

from dataclasses import dataclass

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
           "placebo")


@dataclass(frozen=True)
class Codec:
    """One ``--codec`` choice."""

    name: str
    encoder: str
    default_crf: int | None  # None: lossless, --crf/--preset do not apply
    max_crf: int = 51
    containers: tuple[str, ...] = ("matroska", "mp4", "mov")


CODECS: dict[str, Codec] = {
    "x264": Codec("x264", "libx264", 18),
    # x265's CRF scale sits about 5 above x264's for the same look (its default 28 ~ x264's 23)
    "x265": Codec("x265", "libx265", 23),
    "ffv1": Codec("ffv1", "ffv1", None, containers=("matroska", "mov")),
}


def check(codec: str, crf: int | None, preset: str | None, fmt: str) -> None:
    """Raise ``ValueError`` (one line, naming the option) for a codec/crf/preset/container mix that
    cannot work. ``fmt`` is the ffmpeg muxer name of the output (matroska, mp4, mov)."""
    c = CODECS.get(codec)
    if c is None:
        raise ValueError(f"unknown --codec {codec!r}; choose one of {', '.join(CODECS)}")
    if c.default_crf is None:
        if crf is not None or preset is not None:
            raise ValueError(f"--codec {codec} is lossless: --crf and --preset do not apply")
    else:
        if crf is not None and not 0 <= crf <= c.max_crf:
            raise ValueError(f"--crf must be in [0, {c.max_crf}] for {codec}, got {crf}")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if fmt not in c.containers:
        raise ValueError(f"--codec {codec} cannot be stored in {fmt}; use a .mkv output")


def resolved(codec: str, crf: int | None, preset: str | None) -> dict:
    """The encode settings after defaults: ``{"codec", "crf", "preset"}`` (None where they do not apply)."""
    c = CODECS[codec]
    if c.default_crf is None:
        return {"codec": codec, "crf": None, "preset": None}
    return {"codec": codec, "crf": c.default_crf if crf is None else crf, "preset": preset or "medium"}


def video_args(codec: str, crf: int | None, preset: str | None, fmt: str) -> list[str]:
    """ffmpeg output options for the video stream (``-c:v ...``) of ``codec`` in container ``fmt``."""
    s = resolved(codec, crf, preset)
    c = CODECS[codec]
    if codec == "ffv1":
        # version 3, intra-only with per-slice CRCs: the archival FFV1 settings
        return ["-c:v", c.encoder, "-level", "3", "-g", "1", "-slicecrc", "1"]
    args = ["-c:v", c.encoder, "-preset", s["preset"], "-crf", str(s["crf"])]
    if codec == "x265":
        args += ["-x265-params", "log-level=error"]
    return args + tag_args(codec, fmt)


def tag_args(codec: str, fmt: str) -> list[str]:
    """Container tag options (also for a stream copy): HEVC in MP4/MOV as ``hvc1``, which Apple's
    players need."""
    return ["-tag:v", "hvc1"] if codec == "x265" and fmt in ("mp4", "mov") else []
