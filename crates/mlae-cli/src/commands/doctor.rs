//! `mlae-cli doctor`: what libtorch and hardware this binary runs on. The NVIDIA driver is
//! asked directly, also when libtorch sees no CUDA device, so that "no CUDA" says why: a
//! CPU-only libtorch, a missing or too old driver, or no GPU visible.

use clap::Args;
use mlae_vit::cuda::{cuda_version_text, cudnn_version_text};
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
    let gpus: Vec<String> = info.gpus.iter().map(|g| g.describe()).collect();
    let c = &info.cuda;
    let cuda_built = c.built_cuda.map(|v| cuda_version_text(v as i32));
    let cudnn_built = c.built_cudnn.map(cudnn_version_text);
    let problem = info.cuda_problem().map(|p| p.to_string());
    if args.json {
        let report = serde_json::json!({
            "tch": TCH_VERSION,
            "libtorch_version": version,
            "libtorch_dir": dir,
            "linked_dir": info.linked_dir,
            "libtorch_cuda": c.libtorch_cuda,
            "cuda_built": cuda_built,
            "cudnn_built": cudnn_built,
            "driver": c.driver.describe(),
            "kernel_module": c.kernel_module,
            "cuda": info.cuda_available,
            "cudnn": info.cudnn_available,
            "cuda_devices": info.cuda_device_count,
            "cuda_problem": problem,
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
        match &cuda_built {
            Some(v) => println!(
                "libtorch CUDA     : yes (libtorch_cuda.so loaded), built with CUDA {v}, cuDNN {}",
                cudnn_built.as_deref().unwrap_or("none")
            ),
            None => println!("libtorch CUDA     : no (CPU-only build: libtorch_cuda.so is not loaded)"),
        }
        println!(
            "NVIDIA driver     : {}{}",
            c.driver.describe(),
            c.kernel_module.as_ref().map_or(String::new(), |k| format!(" (kernel module {k})"))
        );
        for g in &gpus {
            println!("  {g}");
        }
        println!("CUDA available    : {}", yes_no(info.cuda_available));
        println!("cuDNN available   : {}", yes_no(info.cudnn_available));
        println!("CUDA devices      : {} (as libtorch sees them)", info.cuda_device_count);
        if let Some(p) = &problem {
            println!("why no CUDA       : {p}");
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
