//! `cargo xtask report --sweep DIR`: the command line of mlae-report (a sweep's results in the
//! paper's format beside its published rows, as Markdown, CSV and a PNG chart).

use crate::util;
use anyhow::Result;
use clap::Args;
use std::io::Write as _;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The sweep directory; repeat it to put several sweeps of one benchmark in one table
    /// (then --out is required).
    #[arg(long, value_name = "DIR", required = true)]
    pub sweep: Vec<PathBuf>,
    /// Where report.md, report.csv and domains.png go (default: <sweep>/report).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Leave out the wall times: the report then holds only what the runs computed, so two
    /// sweeps of the same grid give the same bytes.
    #[arg(long)]
    pub no_timings: bool,
    /// Also show this task's per-class test accuracy and confusion matrices (one PNG per row).
    #[arg(long, value_name = "TASK")]
    pub confusion: Option<String>,
    /// The sweeps are one grid run at several training lengths (`cargo xtask sweep ... --set
    /// train.epochs=N`, one directory each): write curve.md, curve.csv and curve.png, test
    /// accuracy against epochs per task and method, instead of the report.
    #[arg(long, conflicts_with = "confusion")]
    pub curve: bool,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let sweeps: Vec<mlae_sweep::SweepDir> =
        args.sweep.iter().map(|d| mlae_sweep::SweepDir { root: util::absolute(d) }).collect();
    if sweeps.len() > 1 && args.out.is_none() {
        anyhow::bail!("a report of {} sweeps needs --out DIR (it belongs to none of them)", sweeps.len());
    }
    if args.curve {
        let curve = mlae_report::curve::Curve::collect(&sweeps)?;
        let out = args.out.as_deref().map(util::absolute).unwrap_or_else(|| sweeps[0].root.join("curve"));
        curve.write(&out)?;
        print!("{}", curve.markdown());
        std::io::stdout().flush()?;
        eprintln!("wrote {}, curve.csv and curve.png", out.join("curve.md").display());
        return Ok(());
    }
    let published = mlae_report::load_published(&util::root().join("configs/published/mlae-paper.toml"))?;
    let opts = mlae_report::BuildOptions { timings: !args.no_timings, confusion: args.confusion.clone() };
    let report = mlae_report::build_with(&sweeps, &published, opts)?;
    let out = args.out.as_deref().map(util::absolute).unwrap_or_else(|| sweeps[0].root.join("report"));
    report.write(&out)?;
    print!("{}", report.markdown);
    std::io::stdout().flush()?;
    eprintln!("wrote {}, report.csv and domains.png", out.join("report.md").display());
    Ok(())
}
