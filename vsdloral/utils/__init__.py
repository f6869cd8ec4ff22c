"""Small helpers shared by the plugin, the command line and the training package."""
