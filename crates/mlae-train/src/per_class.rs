//! Per-class results of an evaluated split, written into the run directory by the end of
//! `finetune` and by `mlae-cli eval`: `results/<split>/per_class.csv`, `confusion.csv` and
//! `confusion.png`, all with the class names.

use crate::error::{Result, TrainError};
use crate::rundir::{RunLayout, write_file};
use mlae_formats::Confusion;

/// Writes the per-class files of `split` from `counts` (row-major `[true][predicted]`) and
/// returns the matrix. The CSV files are written atomically; a PNG that cannot be drawn (no
/// font, say) is a warning, as with the learning curves.
pub fn write_per_class(
    layout: &RunLayout,
    split: &str,
    classes: &[String],
    counts: Vec<u64>,
) -> Result<Confusion> {
    let matrix = Confusion::new(classes.to_vec(), counts).map_err(|e| {
        TrainError::Invalid(format!(
            "{}: {e} (the run's class list does not fit its head)",
            layout.classes().display()
        ))
    })?;
    let dir = layout.results_dir(split);
    write_file(&dir.join("per_class.csv"), matrix.per_class_csv().as_bytes())?;
    write_file(&dir.join("confusion.csv"), matrix.to_csv().as_bytes())?;
    let png = dir.join("confusion.png");
    let title = format!("{split}: accuracy {:.4} on {} images", matrix.accuracy(), matrix.images());
    if let Err(e) = mlae_plot::confusion_matrix(&png, &title, &matrix.classes, &matrix.counts) {
        tracing::warn!("could not draw {}: {e}", png.display());
    }
    Ok(matrix)
}

/// The classes with the lowest accuracy (at most `k`, classes without images left out), for
/// the line a command prints after the overall accuracy.
pub fn weakest(matrix: &Confusion, k: usize) -> String {
    let mut rows: Vec<_> =
        matrix.per_class().into_iter().filter_map(|r| r.accuracy.map(|a| (a, r.name))).collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    rows.iter().take(k).map(|(a, n)| format!("{n} {a:.3}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_with_names_and_a_misfit_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = RunLayout::new(tmp.path());
        let names = vec!["cat".to_string(), "dog".to_string()];
        let m = write_per_class(&layout, "test", &names, vec![3, 1, 0, 4]).unwrap();
        assert_eq!((m.images(), m.correct()), (8, 7));
        let dir = layout.results_dir("test");
        let pc = std::fs::read_to_string(dir.join("per_class.csv")).unwrap();
        assert_eq!(pc, "class,images,correct,accuracy\ncat,4,3,0.7500\ndog,4,4,1.0000\n");
        assert_eq!(Confusion::read_csv(&dir.join("confusion.csv")).unwrap(), m);
        assert!(dir.join("confusion.png").is_file());
        assert_eq!(weakest(&m, 1), "cat 0.750");
        let err = write_per_class(&layout, "test", &names, vec![1; 9]).unwrap_err().to_string();
        assert!(err.contains("classes.txt"), "{err}");
    }
}
