//! Successive halving's own tables (`--search halving`): each group's rungs and the training
//! it took against the full grid's, and, when the report also holds a full search of the same
//! grid, the two searches' selections and their finals' test accuracy side by side.

use crate::error::Result;
use mlae_formats::RunPhase;
use mlae_sweep::SweepDir;
use mlae_sweep::dir::read_json;
use mlae_sweep::halving::GroupProgress;
use mlae_sweep::select::Selection;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A sweep's `halving.json`, if it ran with `--search halving`.
pub fn read_halving(sweep: &SweepDir) -> Result<Option<BTreeMap<String, GroupProgress>>> {
    Ok(read_json(&sweep.halving())?)
}

/// The halving sections for every halving sweep among `sweeps`.
pub fn halving_tables(sweeps: &[SweepDir], md: &mut String) -> Result<()> {
    for sweep in sweeps {
        let Some(groups) = read_halving(sweep)? else { continue };
        let _ = writeln!(md, "\n## Successive halving (`{}`)\n", sweep.root.display());
        let _ = writeln!(
            md,
            "Per task and seed: the rungs (epochs), how many settings each rung kept, the selected setting, and \
             the run-epochs of search training (one run-epoch is one pass of one setting over the training \
             split) against the full grid's.\n"
        );
        let _ =
            writeln!(md, "| group | rungs | settings per rung | selected | run-epochs | full grid | ratio |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let (mut trained, mut full) = (0u64, 0u64);
        for (name, g) in &groups {
            let mut kept = vec![g.settings.to_string()];
            // settings trained at each rung: all, then what each inner rung kept
            kept.extend(
                g.decided.iter().take(g.rungs.len().saturating_sub(1)).map(|r| r.kept.len().to_string()),
            );
            let selected = match g.decided.last() {
                Some(r) if g.decided.len() == g.rungs.len() => short(&r.kept[0]),
                _ => format!("(rung {} of {} pending)", g.decided.len() + 1, g.rungs.len()),
            };
            let _ = writeln!(
                md,
                "| {name} | {:?} | {} | {selected} | {} | {} | {:.2}x |",
                g.rungs,
                kept.join(" -> "),
                g.epochs_trained,
                g.full_grid_epochs,
                g.full_grid_epochs as f64 / g.epochs_trained.max(1) as f64
            );
            trained += g.epochs_trained;
            full += g.full_grid_epochs;
        }
        let _ = writeln!(
            md,
            "\nIn all: {trained} run-epochs where the full grid trains {full}: {:.2}x less search training.",
            full as f64 / trained.max(1) as f64
        );
        if let Some(other) = full_search_beside(sweep, sweeps)? {
            comparison(sweep, &other, md)?;
        }
    }
    Ok(())
}

/// The run name without its stage, task and seed: the setting (`coeff_init=2.0,expert_dropout=0.1`).
fn short(run: &str) -> String {
    let parts: Vec<&str> = run.split('.').collect();
    // search.<task>.<variant>.<point>.s<seed>; the point may hold dots (2.0)
    if parts.len() > 4 { parts[3..parts.len() - 1].join(".") } else { run.to_string() }
}

/// Another sweep of `sweeps` that searched the same grid in full (a selection, no halving).
fn full_search_beside(halving: &SweepDir, sweeps: &[SweepDir]) -> Result<Option<SweepDir>> {
    let grid = halving.read_record()?.grid;
    for s in sweeps {
        if s.root != halving.root
            && s.read_record()?.grid == grid
            && read_halving(s)?.is_none()
            && Selection::read_all(s)?.is_some()
        {
            return Ok(Some(s.clone()));
        }
    }
    Ok(None)
}

/// Per final run: the full search's selection and the halving's, and their finals' test
/// accuracy; then the mean difference over the finals both have.
fn comparison(halving: &SweepDir, full: &SweepDir, md: &mut String) -> Result<()> {
    let (Some(h), Some(f)) = (Selection::read_all(halving)?, Selection::read_all(full)?) else {
        return Ok(());
    };
    let test = |sweep: &SweepDir, run: &str| -> Result<Option<f64>> {
        let layout = sweep.run_layout(run);
        if layout.phase() != RunPhase::Done {
            return Ok(None);
        }
        Ok(layout.read_summary()?.map(|s| 100.0 * s.test_acc))
    };
    let _ = writeln!(md, "\n### Against the full search of `{}`\n", full.root.display());
    let _ = writeln!(
        md,
        "| final run | full grid selected | halving selected | test, full (%) | test, halving (%) | halving - full |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    let (mut diffs, mut same) = (Vec::new(), 0);
    for (name, hc) in &h {
        let Some(fc) = f.get(name) else { continue };
        let (Some(ft), Some(ht)) = (test(full, name)?, test(halving, name)?) else { continue };
        if fc.selected == hc.selected {
            same += 1;
        }
        diffs.push(ht - ft);
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {ft:.2} | {ht:.2} | {:+.2} |",
            short(&fc.selected),
            short(&hc.selected),
            ht - ft
        );
    }
    if !diffs.is_empty() {
        let n = diffs.len() as f64;
        let mean = diffs.iter().sum::<f64>() / n;
        let mean_abs = diffs.iter().map(|d| d.abs()).sum::<f64>() / n;
        let _ = writeln!(
            md,
            "\nOver {} finals: the same setting selected in {same}; halving's final test accuracy minus the full \
             search's: mean {mean:+.2} points, mean absolute {mean_abs:.2}.",
            diffs.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlae_sweep::Chosen;
    use mlae_sweep::dir::write_json;
    use mlae_sweep::halving::RungOutcome;

    /// A sweep directory with a finished final run of test accuracy `acc` that selected `selected`.
    fn sweep(root: &std::path::Path, selected: &str, acc: f64, halving: bool) -> SweepDir {
        let s = SweepDir { root: root.to_path_buf() };
        std::fs::create_dir_all(&s.root).unwrap();
        std::fs::write(
            s.record(),
            r#"{"grid":"g","grid_path":"/g.toml","benchmark":"demo","set":[],"data_root":null,"checkpoint":null}"#,
        )
        .unwrap();
        let chosen = Chosen {
            task: "t".into(),
            variant: "mlae".into(),
            seed: 0,
            metric: "best_val_acc".into(),
            selected: selected.into(),
            point: vec![],
            value: 0.9,
            candidates: vec![],
        };
        write_json(&s.selection(), &BTreeMap::from([("final.t.mlae.s0".to_string(), chosen)])).unwrap();
        let run = s.run_layout("final.t.mlae.s0");
        std::fs::create_dir_all(run.root()).unwrap();
        std::fs::write(run.status(), r#"{"state":"finished","step":3,"epoch":3}"#).unwrap();
        std::fs::write(
            run.summary(),
            format!(
                r#"{{"task":"t","benchmark":"demo","method":"mlae","protocol":"paper","test_acc":{acc},
                "test_acc_final":{acc},"best_test_acc":{acc},"best_val_acc":null,"best_test_epoch":3,
                "selected_epoch":null,"epochs":3,"steps":3,"trainable_params":1,"adapter_params":1,
                "head_params":0,"total_params":2,"wall_seconds":1.0,"train_images_per_s":1.0,"peak_mem_mb":1.0,
                "device":"cpu","precision":"fp32","seed":0,"config_hash":"h","versions":{{}},"notes":[]}}"#
            ),
        )
        .unwrap();
        if halving {
            let g = GroupProgress {
                task: "t".into(),
                variant: "mlae".into(),
                seed: 0,
                settings: 9,
                rungs: vec![1, 3, 10],
                decided: [(1, 3), (3, 1), (10, 1)]
                    .iter()
                    .map(|&(epoch, k)| RungOutcome {
                        epoch,
                        metric: "val_acc".into(),
                        scores: vec![],
                        kept: vec![selected.to_string(); k],
                    })
                    .collect(),
                epochs_trained: 22,
                full_grid_epochs: 90,
            };
            write_json(&s.halving(), &BTreeMap::from([("search.t.mlae.s0".to_string(), g)])).unwrap();
        }
        s
    }

    #[test]
    fn halving_reports_its_compute_and_its_finals_against_the_full_search() {
        let tmp = tempfile::tempdir().unwrap();
        let full = sweep(&tmp.path().join("full"), "search.t.mlae.p=0.1.s0", 0.9, false);
        let halved = sweep(&tmp.path().join("halving"), "search.t.mlae.p=0.5.s0", 0.8975, true);
        let mut md = String::new();
        halving_tables(&[full, halved], &mut md).unwrap();
        assert!(
            md.contains("| search.t.mlae.s0 | [1, 3, 10] | 9 -> 3 -> 1 | p=0.5 | 22 | 90 | 4.09x |"),
            "{md}"
        );
        assert!(md.contains("In all: 22 run-epochs where the full grid trains 90: 4.09x less"), "{md}");
        assert!(md.contains("| final.t.mlae.s0 | p=0.1 | p=0.5 | 90.00 | 89.75 | -0.25 |"), "{md}");
        assert!(md.contains("the same setting selected in 0; halving's final test accuracy minus the full search's: mean -0.25 points, mean absolute 0.25"), "{md}");
    }

    #[test]
    fn the_setting_is_the_point_of_the_run_name() {
        assert_eq!(
            short("search.mnist5k.mlae.coeff_init=2.0,expert_dropout=0.1.s0"),
            "coeff_init=2.0,expert_dropout=0.1"
        );
        assert_eq!(short("search.t.mlae.expert_dropout=0.5.s12"), "expert_dropout=0.5");
    }
}
