"""Chunked, resumable rendering of ``vsdloral upscale`` on Ray (``--workers N`` or ``--ray ADDRESS``).

The range ``--start/--end`` is cut into chunks of ``--chunk-frames`` frames. Each chunk is one Ray
task that builds the same graph as the single-process path (:func:`vsdloral.scripts.graph.build`,
which trims *after* the filter, so a chunk's first frame still has the previous source frame as its
reference) and encodes it into the work folder, under a temporary name renamed when complete. A
JSON manifest records the job (source, settings, model sha256) and which chunks are done; rerunning
the same command resumes. When every chunk is done they are joined with ffmpeg's concat demuxer
(stream copy) and the source's audio is muxed in.

Modules: :mod:`.options` (CLI options), :mod:`.chunks` (the plan), :mod:`.manifest` (job identity
and done-state), :mod:`.render` (one chunk, no Ray needed),
:mod:`.tasks` (the Ray task), :mod:`.cluster` (starting or joining Ray, node checks),
:mod:`.runtime` (the versions and CPU level a job records), :mod:`.reaper` (a local run's Ray
processes die with the driver),
:mod:`.progress` (the bar), :mod:`.concat` (the final mux), :mod:`.driver` (the command, raising
:class:`.errors.DistributedError`); the media look-ups (ffprobe, frame counts, audio options), some
shared with the single-process path, are in :mod:`vsdloral.media`.
"""
