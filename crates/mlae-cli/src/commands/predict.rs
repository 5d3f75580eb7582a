//! `mlae-cli predict`: classify image files and folders with a trained run.

use anyhow::Result;
use clap::{ArgGroup, Args};
use mlae_formats::csv_record;
use mlae_train::evaluator::{ModelSource, WhichCheckpoint};
use mlae_train::predict::{Outcome, Predictor};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("format").args(["json", "csv"])))]
pub struct PredictArgs {
    /// The run directory (its config gives the preprocessing, data/classes.txt the names).
    #[arg(long)]
    pub run: PathBuf,
    /// Classify with an exported merged model (`export --format merged`) instead of the run's
    /// checkpoint.
    #[arg(long, value_name = "FILE", conflicts_with = "best")]
    pub merged: Option<PathBuf>,
    /// Use the run's best checkpoint instead of its last.
    #[arg(long)]
    pub best: bool,
    /// How many classes to print per image, most probable first.
    #[arg(long, default_value_t = 1)]
    pub top_k: usize,
    /// One JSON object a line: {"path", "predictions": [{"class", "index", "probability"}]}
    /// or {"path", "error"}.
    #[arg(long)]
    pub json: bool,
    /// CSV: path,rank,class,index,probability,error (one row per class shown, one per failure).
    #[arg(long)]
    pub csv: bool,
    /// Where to compute (cpu, cuda, cuda:N, auto); default: the run's train.device.
    #[arg(long)]
    pub device: Option<String>,
    /// Image files and folders (folders are searched recursively for .jpg, .jpeg and .png).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Clone, Copy)]
enum Style {
    Text,
    Json,
    Csv,
}

pub fn run(args: &PredictArgs) -> Result<ExitCode> {
    let source = match (&args.merged, args.best) {
        (Some(m), _) => ModelSource::Merged(m.clone()),
        (None, true) => ModelSource::Checkpoint(WhichCheckpoint::Best),
        (None, false) => ModelSource::Checkpoint(WhichCheckpoint::Last),
    };
    let files = mlae_data::image_files(&args.paths)?;
    if files.is_empty() {
        anyhow::bail!("no .jpg, .jpeg or .png files under {}", join(&args.paths));
    }
    let predictor = Predictor::open(&args.run, &source, args.device.as_deref())?;
    let style = match (args.json, args.csv) {
        (true, _) => Style::Json,
        (_, true) => Style::Csv,
        _ => Style::Text,
    };
    let classes = predictor.classes().to_vec();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Style::Csv = style {
        writeln!(out, "path,rank,class,index,probability,error")?;
    }
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut write_err = None;
    predictor.predict(&files, args.top_k, |o| {
        match &o.result {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
        if write_err.is_none()
            && let Err(e) = write_outcome(&mut out, style, &classes, &o)
        {
            write_err = Some(e);
        }
    })?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    out.flush()?;
    if failed > 0 {
        eprintln!("{ok} images classified, {failed} could not be read (named above)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn write_outcome(out: &mut impl Write, style: Style, classes: &[String], o: &Outcome) -> std::io::Result<()> {
    let path = o.path.display().to_string();
    match (style, &o.result) {
        (Style::Text, Ok(ranked)) => {
            let shown: Vec<String> = ranked.iter().map(|(i, p)| format!("{} {p:.4}", classes[*i])).collect();
            writeln!(out, "{path}\t{}", shown.join("\t"))
        }
        (Style::Text, Err(e)) => {
            // The failure goes to stderr, in order with the rest for a reader of the terminal.
            out.flush()?;
            eprintln!("error: {e}");
            Ok(())
        }
        (Style::Json, Ok(ranked)) => {
            let predictions: Vec<_> = ranked
                .iter()
                .map(|(i, p)| serde_json::json!({ "class": classes[*i], "index": i, "probability": p }))
                .collect();
            writeln!(out, "{}", serde_json::json!({ "path": path, "predictions": predictions }))
        }
        (Style::Json, Err(e)) => writeln!(out, "{}", serde_json::json!({ "path": path, "error": e })),
        (Style::Csv, Ok(ranked)) => {
            for (rank, (i, p)) in ranked.iter().enumerate() {
                let (rank, index, p) = ((rank + 1).to_string(), i.to_string(), p.to_string());
                out.write_all(csv_record([path.as_str(), &rank, &classes[*i], &index, &p, ""]).as_bytes())?;
            }
            Ok(())
        }
        (Style::Csv, Err(e)) => {
            out.write_all(csv_record([path.as_str(), "", "", "", "", e.as_str()]).as_bytes())
        }
    }
}

fn join(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_style_names_the_class_and_the_failure() {
        let classes = vec!["cat".to_string(), "a, b".to_string()];
        let ok = Outcome { path: "x/1.png".into(), result: Ok(vec![(1, 0.75), (0, 0.25)]) };
        let bad = Outcome { path: "x/2.png".into(), result: Err("x/2.png: truncated".into()) };
        let mut buf = Vec::new();
        write_outcome(&mut buf, Style::Text, &classes, &ok).unwrap();
        write_outcome(&mut buf, Style::Csv, &classes, &ok).unwrap();
        write_outcome(&mut buf, Style::Csv, &classes, &bad).unwrap();
        write_outcome(&mut buf, Style::Json, &classes, &bad).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "x/1.png\ta, b 0.7500\tcat 0.2500");
        assert_eq!(lines[1], "x/1.png,1,\"a, b\",1,0.75,");
        assert_eq!(lines[2], "x/1.png,2,cat,0,0.25,");
        assert_eq!(lines[3], "x/2.png,,,,,x/2.png: truncated");
        let v: serde_json::Value = serde_json::from_str(lines[4]).unwrap();
        assert_eq!(v["error"], "x/2.png: truncated");
    }
}
