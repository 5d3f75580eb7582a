//! End-to-end tests: the `mlae-cli` binaries driven as a user would.

mod data;
mod dmlora;
mod doctor;
mod finetune;
mod support;
