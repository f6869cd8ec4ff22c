"""DLoRAL training: VAE / base-prior pretraining, dual-LoRA learning, export to the vsdloral weights file."""
