"""The training data set, assembled reproducibly from package registries (see :mod:`training.datasets.assemble`)."""
