"""The DLoRAL model: SPyNet, CFR, presets, the weights file and the restorer."""
