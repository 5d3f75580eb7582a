//! One module per subcommand.

pub mod data;
pub mod doctor;
pub mod eval;
pub mod export;
pub mod finetune;
