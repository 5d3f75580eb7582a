//! `cargo xtask bench-data`: decode + resize throughput of mlae-data against PIL + torchvision.
//!
//! Both sides get the same generated JPEGs (photo-like: smooth colour fields and shapes plus
//! sensor-like noise, 500x375, quality 90) and produce `size` x `size` uint8 RGB with
//! antialiased bicubic resizing (the VTAB-1k transform):
//! - Rust: `mlae_data::load_images` with `Transform::vtab(size)` and no cache, rayon on all
//!   cores (decoding with the `image` crate's zune-jpeg, resampling Pillow's way);
//! - Python: `xtask/python/bench_decode_pil.py`, a 2-process pool running PIL open + convert
//!   RGB + torchvision `Resize((size, size), BICUBIC)` on the PIL image.
//!
//! The command re-runs itself from a release build of xtask, so the Rust side is optimised as
//! the trainer is. Rounds alternate Rust, Python, Rust, Python, ... on warm files; the medians give the
//! `decode_resize_img_per_s` line. Then the pixels are compared with PIL's on the first images:
//! decoder against decoder, resampler against resampler on identical input, and end to end.
//! It is a benchmark, not a test: it prints numbers and fails only if a side fails.

use crate::setup;
use anyhow::{Context, Result, bail};
use clap::Args;
use mlae_core::stats::median;
use mlae_data::{Filter, Item, SplitList, Transform, load_images, resize_rgb};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The packages the Python side needs; torchvision must stay 0.26.0 (another version would
/// replace torch 2.11.0, which the build links).
const PY_PACKAGES: [&str; 3] = ["torchvision==0.26.0", "pillow==13.0.0", "numpy"];

#[derive(Debug, Args)]
pub struct BenchDataArgs {
    /// Number of JPEGs to generate and decode per round.
    #[arg(long, default_value_t = 400)]
    pub images: usize,
    /// Output side (square).
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Rounds per side, interleaved.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Processes in the Python pool.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Images compared pixel by pixel with PIL's output.
    #[arg(long, default_value_t = 20)]
    pub compare: usize,
}

pub fn run(args: &BenchDataArgs) -> Result<()> {
    if args.images == 0 || args.rounds == 0 {
        bail!("--images and --rounds must be positive");
    }
    if cfg!(debug_assertions) {
        // `cargo xtask` is a debug build; the trainer that decodes images is a release build.
        eprintln!("bench-data measures optimised code: running it from a release build of xtask");
        let mut cmd = crate::util::cargo();
        cmd.args(["run", "--quiet", "--release", "--package", "xtask", "--", "bench-data"]);
        cmd.args(std::env::args_os().skip(2));
        return crate::util::run(&mut cmd);
    }
    let python = setup::ensure_python()?;
    setup::pip_install(&python, &PY_PACKAGES)?;
    let script = crate::util::root().join("xtask/python/bench_decode_pil.py");

    let tmp = tempfile::Builder::new().prefix("mlae-bench-data-").tempdir()?;
    eprintln!("generating {} JPEGs (500x375, quality 90) in {}", args.images, tmp.path().display());
    let paths: Vec<PathBuf> = (0..args.images)
        .map(|i| {
            let p = tmp.path().join(format!("{i:05}.jpg"));
            write_photo_jpeg(&p, 500, 375, i as u64).map(|_| p)
        })
        .collect::<Result<_>>()?;
    let list_file = tmp.path().join("files.txt");
    let listing: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    std::fs::write(&list_file, listing)?;
    let list = SplitList {
        name: "bench".into(),
        source: list_file.clone(),
        items: paths
            .iter()
            .enumerate()
            .map(|(i, p)| Item { path: p.clone(), label: 0, line: i + 1 })
            .collect(),
        json: false,
    };
    let tf = Transform::vtab(args.size);
    let jpeg_bytes: u64 = paths.iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum();

    // Warm-up: the thread pool, the page cache, the allocator.
    let warm = SplitList { items: list.items[..list.items.len().min(16)].to_vec(), ..list.clone() };
    load_images(&warm, &tf, 1, None, 0)?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rust = Vec::new();
    let mut py = Vec::new();
    let mut py_meta = serde_json::Value::Null;
    for round in 0..args.rounds {
        eprintln!("round {}/{}: rust, then python", round + 1, args.rounds);
        let t = Instant::now();
        let set = load_images(&list, &tf, 1, None, 0)?;
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(set.len, list.len());
        rust.push(list.len() as f64 / secs);

        let out =
            crate::util::output(Command::new(&python).arg(&script).arg("--list").arg(&list_file).args([
                "--size",
                &args.size.to_string(),
                "--workers",
                &args.workers.to_string(),
            ]))?;
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default())
            .with_context(|| format!("unexpected output from {}: {out}", script.display()))?;
        py.push(v["img_per_s"].as_f64().context("no img_per_s in the Python output")?);
        py_meta = v;
    }

    println!();
    println!(
        "decode + resize to {s}x{s} (antialiased bicubic), {} JPEGs 500x375 q90 ({:.0} KiB each), {cores} cores",
        args.images,
        jpeg_bytes as f64 / args.images as f64 / 1024.0,
        s = args.size
    );
    println!("rust: mlae-data load_images, rayon {cores} threads, no cache");
    println!(
        "pytorch: PIL {} + torchvision {} Resize, {}-process pool",
        py_meta["pillow"].as_str().unwrap_or("?"),
        py_meta["torchvision"].as_str().unwrap_or("?"),
        args.workers
    );
    println!("| round | rust img/s | pytorch img/s | rust/pytorch |");
    println!("|---|---|---|---|");
    for (i, (r, p)) in rust.iter().zip(&py).enumerate() {
        println!("| {} | {r:.1} | {p:.1} | {:.2} |", i + 1, r / p);
    }
    let (rm, pm) = (median(&rust), median(&py));
    println!("| median | {rm:.1} | {pm:.1} | {:.2} |", rm / pm);
    println!("decode_resize_img_per_s: rust={rm:.1} pytorch={pm:.1} ratio={:.3}", rm / pm);

    compare_pixels(&python, &script, &list, args, tmp.path())
}

/// Differences between two byte buffers: (largest, mean, share of bytes that differ).
fn diff_stats(pairs: &[(Vec<u8>, Vec<u8>)]) -> (u8, f64, f64) {
    let (mut max, mut sum, mut differ, mut n) = (0u8, 0u64, 0u64, 0u64);
    for (a, b) in pairs {
        assert_eq!(a.len(), b.len(), "compared images differ in size");
        for (x, y) in a.iter().zip(b) {
            let d = x.abs_diff(*y);
            max = max.max(d);
            sum += u64::from(d);
            differ += u64::from(d != 0);
            n += 1;
        }
    }
    (max, sum as f64 / n.max(1) as f64, differ as f64 / n.max(1) as f64)
}

/// Pixels against PIL's: the decoders, the resamplers on identical input, and end to end.
fn compare_pixels(
    python: &Path,
    script: &Path,
    list: &SplitList,
    args: &BenchDataArgs,
    tmp: &Path,
) -> Result<()> {
    let k = args.compare.min(list.len());
    if k == 0 {
        return Ok(());
    }
    let dump = tmp.join("pil-dump");
    crate::util::output(
        Command::new(python)
            .arg(script)
            .arg("--list")
            .arg(&list.source)
            .args(["--size", &args.size.to_string(), "--dump-count", &k.to_string()])
            .arg("--dump")
            .arg(&dump),
    )?;
    let s = args.size as usize;
    let first = SplitList { items: list.items[..k].to_vec(), ..list.clone() };
    let ours = load_images(&first, &Transform::vtab(args.size), 1, None, 0)?;
    let (mut decoders, mut resamplers, mut end_to_end) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..k {
        let shape = std::fs::read_to_string(dump.join(format!("{i}.shape")))?;
        let dims: Vec<usize> = shape.split_whitespace().map(|x| x.parse()).collect::<Result<_, _>>()?;
        let (h, w) = (dims[0], dims[1]);
        let pil_decoded = std::fs::read(dump.join(format!("{i}.decoded.rgb")))?;
        let pil_resized = std::fs::read(dump.join(format!("{i}.resized.rgb")))?;
        let our_decoded = image::open(&list.items[i].path)?.into_rgb8().into_raw();
        let mut resized_from_pil = vec![0u8; s * s * 3];
        resize_rgb(&pil_decoded, w, h, &mut resized_from_pil, s, s, Filter::Bicubic);
        decoders.push((our_decoded, pil_decoded));
        resamplers.push((resized_from_pil, pil_resized.clone()));
        end_to_end.push((ours.image(i).to_vec(), pil_resized));
    }
    println!("pixels against PIL on the first {k} images (uint8 levels):");
    for (what, pairs) in [
        ("JPEG decoding: zune-jpeg (image crate) vs libjpeg-turbo (PIL), full size", &decoders),
        ("resampling alone, same decoded input: ours vs PIL bicubic", &resamplers),
        ("end to end (decode + resize)", &end_to_end),
    ] {
        let (max, mean, share) = diff_stats(pairs);
        println!("  {what}: max |diff| {max}, mean |diff| {mean:.4}, bytes differing {:.2}%", share * 100.0);
    }
    Ok(())
}

/// A photo-like test image: a smooth background gradient, a few soft-edged coloured shapes,
/// fine texture and per-pixel noise (what makes JPEGs of photos larger than of drawings).
fn write_photo_jpeg(path: &Path, w: u32, h: u32, seed: u64) -> Result<()> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x2545_F491_4F6C_DD1D);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut unit = || (next() >> 11) as f32 / (1u64 << 53) as f32;
    let bg: Vec<[f32; 3]> = (0..2).map(|_| [unit() * 255.0, unit() * 255.0, unit() * 255.0]).collect();
    let blobs: Vec<(f32, f32, f32, [f32; 3])> = (0..6)
        .map(|_| {
            (
                unit() * w as f32,
                unit() * h as f32,
                20.0 + unit() * 120.0,
                [unit() * 255.0, unit() * 255.0, unit() * 255.0],
            )
        })
        .collect();
    let freq = 0.05 + unit() * 0.2;
    let mut noise = {
        let mut s = seed ^ 0xDEAD_BEEF;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) % 25) as f32 - 12.0
        }
    };
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let t = (x as f32 / w as f32 + y as f32 / h as f32) / 2.0;
        let mut px = [0f32; 3];
        for c in 0..3 {
            px[c] = bg[0][c] * (1.0 - t) + bg[1][c] * t;
        }
        for (cx, cy, r, col) in &blobs {
            let d2 = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)) / (r * r);
            let a = (-d2 * d2).exp();
            for c in 0..3 {
                px[c] = px[c] * (1.0 - a) + col[c] * a;
            }
        }
        let texture = 10.0 * ((x as f32 * freq).sin() * (y as f32 * freq * 1.3).cos());
        let n = noise();
        image::Rgb(px.map(|v| (v + texture + n).clamp(0.0, 255.0) as u8))
    });
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img)?;
    Ok(())
}
