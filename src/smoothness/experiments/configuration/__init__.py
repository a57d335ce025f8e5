"""What to train: one model's configuration and its key (config), grids of them from YAML or presets (grid,
gridvalues), a stored grid compared with a given one (griddiff), and the staged lambda ladders (staging)."""
