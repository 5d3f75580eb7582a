//! Benchmark datasets for MLAE as the papers lay them out, handed out as raw pixels and
//! labels. No libtorch: the training crate turns pixels into tensors.
