//! `cargo xtask report --sweep DIR`: the command line of mlae-report (a sweep's results in the
//! paper's format beside its published rows, as Markdown, CSV and a PNG chart).

use crate::util;
use anyhow::Result;
use clap::Args;
use std::io::Write as _;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The sweep directory.
    #[arg(long, value_name = "DIR")]
    pub sweep: PathBuf,
    /// Where report.md, report.csv and domains.png go (default: <sweep>/report).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let sweep = mlae_sweep::SweepDir { root: util::absolute(&args.sweep) };
    let published = mlae_report::load_published(&util::root().join("configs/published/mlae-paper.toml"))?;
    let report = mlae_report::build(&sweep, &published)?;
    let out = args.out.as_deref().map(util::absolute).unwrap_or_else(|| sweep.root.join("report"));
    report.write(&out)?;
    print!("{}", report.markdown);
    std::io::stdout().flush()?;
    eprintln!("wrote {}, report.csv and domains.png", out.join("report.md").display());
    Ok(())
}
