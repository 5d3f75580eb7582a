//! One module per subcommand.

pub mod analyze;
pub mod bench;
pub mod check;
pub mod data;
pub mod doctor;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod predict;
