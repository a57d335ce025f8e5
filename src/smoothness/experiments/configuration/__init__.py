"""What to train: one model's configuration and its key (config), grids of them from YAML or presets (grid,
gridvalues), and the staged lambda ladders (staging)."""
