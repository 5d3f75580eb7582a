//! `mlae-cli doctor`: what libtorch and hardware this binary runs on.

use clap::Args;
use mlae_vit::runtime::{EXPECTED_LIBTORCH, runtime_info};
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let info = runtime_info();
    let version = info.libtorch_version.clone().unwrap_or_else(|| "unknown".into());
    let dir = info.libtorch_dir.as_ref().map_or("unknown".into(), |d| d.display().to_string());
    let gpus: Vec<String> = info
        .gpus
        .iter()
        .map(|g| {
            format!("cuda:{} {} ({:.1} GiB)", g.index, g.name, g.total_memory_bytes as f64 / 1073741824.0)
        })
        .collect();
    if args.json {
        let report = serde_json::json!({
            "tch": TCH_VERSION,
            "libtorch_version": version,
            "libtorch_dir": dir,
            "linked_dir": info.linked_dir,
            "cuda": info.cuda_available,
            "cudnn": info.cudnn_available,
            "cuda_devices": info.cuda_device_count,
            "gpus": gpus,
            "torch_threads": info.torch_threads,
            "interop_threads": info.torch_interop_threads,
            "cores": info.available_cores,
        });
        println!("{report:#}");
    } else {
        println!("tch crate         : {TCH_VERSION}");
        println!("libtorch          : {version} (expected {EXPECTED_LIBTORCH})");
        println!("libtorch loaded   : {dir}");
        println!("libtorch linked   : {}", info.linked_dir.unwrap_or("unknown (no rpath)"));
        println!("CUDA available    : {}", yes_no(info.cuda_available));
        println!("cuDNN available   : {}", yes_no(info.cudnn_available));
        println!("CUDA devices      : {}", info.cuda_device_count);
        for g in &gpus {
            println!("  {g}");
        }
        println!("torch threads     : {} (inter-op {})", info.torch_threads, info.torch_interop_threads);
        println!("CPU cores         : {}", info.available_cores);
        println!(
            "CPU backends      : MKL {}, oneDNN {}, OpenMP {}",
            yes_no(info.has_mkl),
            yes_no(info.has_mkldnn),
            yes_no(info.has_openmp)
        );
        println!(
            "device            : {}",
            if info.cuda_available { "CUDA".to_string() } else { "CPU only".to_string() }
        );
    }
    if !info.version_ok() {
        eprintln!(
            "error: libtorch {version} at {dir} is not the {EXPECTED_LIBTORCH} that tch {TCH_VERSION} needs; run `cargo xtask setup`"
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// The tch crate version this binary was built with (read from Cargo.lock by build.rs).
const TCH_VERSION: &str = match option_env!("MLAE_TCH_VERSION") {
    Some(v) => v,
    None => "unknown",
};

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
