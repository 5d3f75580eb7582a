//! Per-class results of one evaluated split: the confusion matrix and the accuracy of each
//! class, written into the run directory as CSV (`results/<split>/confusion.csv`,
//! `per_class.csv`) with the class names, because people look at which classes are confused
//! before they read one number.

use crate::error::{FormatError, Result, io_err};
use std::path::Path;

/// Counts of (true class, predicted class) over one split, with the class names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    /// One name a class, in label order.
    pub classes: Vec<String>,
    /// Row-major `[true][predicted]`, `classes.len()` squared.
    pub counts: Vec<u64>,
}

/// One class's row of `per_class.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassResult {
    pub name: String,
    /// Images of this class in the split.
    pub images: u64,
    pub correct: u64,
    /// `None` when the split holds no image of the class.
    pub accuracy: Option<f64>,
}

impl Confusion {
    /// A matrix from its counts; `counts` must hold `classes.len()` squared entries.
    pub fn new(classes: Vec<String>, counts: Vec<u64>) -> Result<Self, crate::Invalid> {
        let c = classes.len();
        if counts.len() != c * c {
            return Err(crate::Invalid(format!(
                "a confusion matrix of {c} classes needs {} counts, got {}",
                c * c,
                counts.len()
            )));
        }
        Ok(Self { classes, counts })
    }

    /// Counts (label, prediction) pairs; a label or prediction outside the classes is refused.
    pub fn from_pairs(
        classes: Vec<String>,
        labels: &[i64],
        predictions: &[i64],
    ) -> Result<Self, crate::Invalid> {
        let c = classes.len();
        let mut counts = vec![0u64; c * c];
        for (&y, &p) in labels.iter().zip(predictions) {
            if y < 0 || p < 0 || y as usize >= c || p as usize >= c {
                return Err(crate::Invalid(format!("label {y} / prediction {p} outside the {c} classes")));
            }
            counts[y as usize * c + p as usize] += 1;
        }
        Ok(Self { classes, counts })
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Images of true class `t` predicted as `p`.
    pub fn count(&self, t: usize, p: usize) -> u64 {
        self.counts[t * self.classes.len() + p]
    }

    /// Images counted.
    pub fn images(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Images on the diagonal.
    pub fn correct(&self) -> u64 {
        (0..self.classes.len()).map(|i| self.count(i, i)).sum()
    }

    /// Top-1 accuracy over the split (0 when it is empty).
    pub fn accuracy(&self) -> f64 {
        self.correct() as f64 / self.images().max(1) as f64
    }

    /// Each class's images, correct predictions and accuracy (recall), in label order.
    pub fn per_class(&self) -> Vec<ClassResult> {
        let c = self.classes.len();
        self.classes
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let images: u64 = self.counts[i * c..(i + 1) * c].iter().sum();
                let correct = self.count(i, i);
                ClassResult {
                    name: name.clone(),
                    images,
                    correct,
                    accuracy: (images > 0).then(|| correct as f64 / images as f64),
                }
            })
            .collect()
    }

    /// `confusion.csv`: a header `true \ predicted,<names...>`, then one row a true class.
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let header = std::iter::once("true \\ predicted").chain(self.classes.iter().map(String::as_str));
        w.write_record(header).expect("writing to memory");
        let c = self.classes.len();
        for (i, name) in self.classes.iter().enumerate() {
            let row = std::iter::once(name.clone())
                .chain(self.counts[i * c..(i + 1) * c].iter().map(|n| n.to_string()));
            w.write_record(row).expect("writing to memory");
        }
        String::from_utf8(w.into_inner().expect("writing to memory")).expect("UTF-8 fields")
    }

    /// `per_class.csv`: `class,images,correct,accuracy` (accuracy empty for a class with no image).
    pub fn per_class_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["class", "images", "correct", "accuracy"]).expect("writing to memory");
        for r in self.per_class() {
            let acc = r.accuracy.map(|a| format!("{a:.4}")).unwrap_or_default();
            w.write_record([r.name, r.images.to_string(), r.correct.to_string(), acc])
                .expect("writing to memory");
        }
        String::from_utf8(w.into_inner().expect("writing to memory")).expect("UTF-8 fields")
    }

    /// Reads a `confusion.csv` back; a malformed file is an error naming it and the row.
    pub fn read_csv(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let bad = |message: String| FormatError::RunDir { path: path.to_path_buf(), message };
        let mut r = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
        let header = r.headers().map_err(|e| bad(e.to_string()))?.clone();
        let classes: Vec<String> = header.iter().skip(1).map(String::from).collect();
        let mut counts = Vec::with_capacity(classes.len() * classes.len());
        let mut rows = 0;
        for (i, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| bad(e.to_string()))?;
            if rec.len() != classes.len() + 1 {
                return Err(bad(format!(
                    "row {}: {} fields, expected {}",
                    i + 2,
                    rec.len(),
                    classes.len() + 1
                )));
            }
            for field in rec.iter().skip(1) {
                counts.push(
                    field.parse().map_err(|_| bad(format!("row {}: `{field}` is not a count", i + 2)))?,
                );
            }
            rows += 1;
        }
        if rows != classes.len() {
            return Err(bad(format!("{rows} rows for {} classes", classes.len())));
        }
        Ok(Self { classes, counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_accuracy_and_per_class_recall() {
        let m =
            Confusion::from_pairs(names(&["cat", "dog", "eel"]), &[0, 0, 1, 1, 1, 0], &[0, 1, 1, 1, 0, 0])
                .unwrap();
        assert_eq!((m.images(), m.correct()), (6, 4));
        assert_eq!(m.count(0, 1), 1);
        assert!((m.accuracy() - 4.0 / 6.0).abs() < 1e-12);
        let pc = m.per_class();
        assert_eq!((pc[0].images, pc[0].correct), (3, 2));
        assert_eq!(pc[2].accuracy, None);
        assert!(Confusion::from_pairs(names(&["a", "b"]), &[2], &[0]).is_err());
        assert!(Confusion::new(names(&["a", "b"]), vec![1, 2, 3]).is_err());
    }

    #[test]
    fn csv_round_trips_names_with_commas_and_quotes() {
        let m = Confusion::new(names(&["golden retriever", "a, b", "say \"hi\""]), (0..9).collect()).unwrap();
        let text = m.to_csv();
        assert!(
            text.starts_with("true \\ predicted,golden retriever,\"a, b\",\"say \"\"hi\"\"\"\n"),
            "{text}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("confusion.csv");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(Confusion::read_csv(&path).unwrap(), m);
        let pc = m.per_class_csv();
        assert_eq!(pc.lines().nth(1), Some("golden retriever,3,0,0.0000"));
        std::fs::write(&path, "true \\ predicted,a,b\na,1,2\n").unwrap();
        let err = Confusion::read_csv(&path).unwrap_err().to_string();
        assert!(err.contains("confusion.csv") && err.contains("1 rows for 2 classes"), "{err}");
    }
}
