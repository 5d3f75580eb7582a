//! End-to-end tests: the `mlae-cli` binaries driven as a user would.

mod analyze;
mod augmented;
mod bench;
mod check;
mod cli;
mod data;
mod dmlora;
mod doctor;
mod faults;
mod finetune;
mod own_images;
mod predict;
mod support;
