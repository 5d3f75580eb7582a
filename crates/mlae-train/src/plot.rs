//! The loss / accuracy plot written into every run directory (`curves.png`): which series
//! it shows; mlae-plot draws them.

use crate::metrics::EpochMetrics;
use mlae_plot::{Series, line_panels};
use std::path::Path;

/// Loss and accuracy against epochs, training and every evaluated split.
pub fn plot_curves(metrics: &[EpochMetrics], path: &Path) -> Result<(), String> {
    let mut loss = vec![Series {
        label: "train loss".into(),
        points: metrics.iter().map(|m| (m.epoch as f64, m.train_loss)).collect(),
    }];
    let mut acc = vec![Series {
        label: "train acc".into(),
        points: metrics.iter().map(|m| (m.epoch as f64, m.train_acc)).collect(),
    }];
    let splits: std::collections::BTreeSet<&String> = metrics.iter().flat_map(|m| m.eval.keys()).collect();
    for split in splits {
        let pick = |f: fn(&crate::metrics::EvalResult) -> f64| -> Vec<(f64, f64)> {
            metrics.iter().filter_map(|m| m.eval.get(split).map(|e| (m.epoch as f64, f(e)))).collect()
        };
        loss.push(Series { label: format!("{split} loss"), points: pick(|e| e.loss) });
        acc.push(Series { label: format!("{split} acc"), points: pick(|e| e.acc) });
    }
    line_panels(path, (1200, 450), &[("Loss", "cross-entropy", loss), ("Accuracy", "top-1", acc)])
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::EvalResult;

    #[test]
    fn writes_a_png_of_the_requested_size() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("curves.png");
        let metrics: Vec<EpochMetrics> = (1..=5)
            .map(|e| EpochMetrics {
                epoch: e,
                step: e * 10,
                lr: 1e-3,
                train_loss: 2.0 / e as f64,
                train_acc: 0.1 * e as f64,
                eval: [("test".to_string(), EvalResult { acc: 0.09 * e as f64, loss: 2.1 / e as f64, n: 8 })]
                    .into_iter()
                    .collect(),
                images_per_s: 10.0,
                seconds: 1.0,
                peak_mem_mb: 1.0,
            })
            .collect();
        plot_curves(&metrics, &path).unwrap();
        let img = image_size(&path);
        assert_eq!(img, (1200, 450));
    }

    /// Width and height from a PNG's IHDR chunk.
    fn image_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        (w, h)
    }
}
