//! The training and evaluation loop for MLAE and its baselines.
