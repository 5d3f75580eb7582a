//! `cargo xtask fixtures`: regenerates the committed golden fixtures with PyTorch, timm, PEFT,
//! Pillow and torchvision themselves, so every tolerance in the tests is against a reference
//! anyone can re-create. The pinned packages go into the project venv; each generator writes
//! into the directory its tests read, and `git status` afterwards shows what changed.

use crate::{setup, util};
use anyhow::Result;
use clap::{Args, ValueEnum};
use std::process::Command;

/// Packages of the generators that do not install their own (vit and import pin theirs).
const PY_PACKAGES: [&str; 5] =
    ["torch==2.11.0", "torchvision==0.26.0", "pillow==13.0.0", "safetensors==0.8.0", "numpy"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Set {
    /// mlae-vit: tiny timm ViT/DINOv2 logits, the MLAE layer, PEFT LoRA, position resizing
    /// both ways, timm's init statistics.
    Vit,
    /// mlae-vit importers: one tiny model in every checkpoint format (timm, npz, HF, ONNX).
    Import,
    /// mlae-data: Pillow's resampling and torchvision's transforms, byte for byte.
    Data,
    /// mlae-train: torch.optim.AdamW with clipping and a parameter without a gradient.
    Train,
}

impl Set {
    fn script_and_dir(self) -> (&'static str, &'static str) {
        match self {
            Set::Vit => ("make_vit_fixtures.py", "crates/mlae-vit/tests/fixtures"),
            Set::Import => ("make_import_fixtures.py", "crates/mlae-vit/tests/fixtures/import"),
            Set::Data => ("make_data_fixtures.py", "crates/mlae-data/tests/fixtures"),
            Set::Train => ("make_train_fixtures.py", "crates/mlae-train/tests/fixtures"),
        }
    }
}

#[derive(Debug, Args)]
pub struct FixturesArgs {
    /// Only these sets (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Set>,
}

pub fn run(args: &FixturesArgs) -> Result<()> {
    let py = setup::ensure_python()?;
    setup::pip_install(&py, &PY_PACKAGES)?;
    let sets = if args.only.is_empty() {
        vec![Set::Vit, Set::Import, Set::Data, Set::Train]
    } else {
        args.only.clone()
    };
    let root = util::root();
    for set in sets {
        let (script, dir) = set.script_and_dir();
        util::step(&format!("fixtures: {dir} ({script})"));
        let mut cmd = Command::new(&py);
        cmd.current_dir(&root).arg(root.join("xtask/python").join(script)).arg(root.join(dir));
        util::run(&mut cmd)?;
    }
    util::step("changed fixture files (git status)");
    let mut git = Command::new("git");
    git.current_dir(&root).args(["status", "--short", "--", "crates/*/tests/fixtures"]);
    util::run(&mut git)
}
