"""Graph builders behind the ``vsdloral upscale`` command (run inside ``vspipe``)."""
