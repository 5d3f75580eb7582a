//! Analyses of trained adapters (paper section 4.3): the experts' parameter cosine similarity
//! (appendix A.4, Figures 4 and 5) and per-expert feature maps (Figures 6 and 7).
//!
//! Both read adapters through [`mlae_vit::AdapterLayer::factors`], so every adapter kind is
//! analysed the same way: MLAE's experts, LoRA's r rank-1 components (coefficient alpha / r),
//! DMLoRA's branches (coefficient s / K). The numbers come from mlae-core; this module only
//! gathers them per run and hands them to mlae-plot to draw; runs are loaded through
//! [`crate::evaluator`].
//!
//! One module per job, imports running one way: `similarity` computes the expert similarity,
//! `experts` the contribution maps, and `commands` (the `analyze` commands) calls both and then
//! mlae-plot; the compute modules never draw.

mod commands;
mod experts;
mod similarity;

pub use commands::{
    draw_expert_grid, draw_similarity_bars, draw_similarity_heatmaps, expert_maps, similarity,
};
pub use experts::{
    EXPERT_MAP_DEFINITION, ExpertMapOptions, ExpertMaps, ExpertMapsOutput, MapScale, default_target,
    expert_contributions, load_run_images,
};
pub use mlae_plot::{
    EXPERT_HEADER, HEATMAP_COLORBAR, HEATMAP_COLUMNS, HEATMAP_PANEL, expert_grid_size, heatmap_size,
};
pub use similarity::{
    LayerSimilarity, RunSimilarity, SIMILARITY_DEFINITION, SimilarityOutput, bar_groups, heatmap_panels,
    model_similarity,
};

#[cfg(test)]
mod tests {
    use super::similarity::{array1, array2};
    use super::*;
    use mlae_core::AdapterSpec;
    use mlae_core::{AdapterKind, TargetLayer};
    use mlae_vit::AdaptedVit;
    use mlae_vit::VitConfig;
    use std::path::PathBuf;
    use tch::{Device, Kind, Tensor};

    fn tiny(spec: &AdapterSpec) -> AdaptedVit {
        let cfg = VitConfig {
            preset: None,
            patch_size: 4,
            dim: 16,
            depth: 2,
            heads: 2,
            mlp_dim: 32,
            in_chans: 3,
            image_size: 16,
            num_classes: 3,
            qkv_bias: true,
            layer_scale: false,
            layer_scale_init: 1e-5,
            drop_path: 0.0,
            eps: 1e-6,
        };
        let model = AdaptedVit::new(&cfg, spec, 5, Device::Cpu).unwrap();
        // Give B and lambda values (B starts at zero), including a negative coefficient.
        tch::no_grad(|| {
            for (name, mut t, _) in model.trainable() {
                if name.ends_with("_B") || name.ends_with("lora_B") {
                    t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
                }
                if name.ends_with("mlae_lambda") {
                    let mut v = vec![1.0f32; t.size()[0] as usize];
                    v[1] = -0.5;
                    t.copy_(&Tensor::from_slice(&v));
                }
            }
        });
        model
    }

    #[test]
    fn similarity_matches_mlae_core_with_coefficients() {
        tch::manual_seed(0);
        let spec = AdapterSpec {
            mlae: mlae_core::MlaeSpec { experts: 4, ..Default::default() },
            ..Default::default()
        };
        let model = tiny(&spec);
        let (layers, mean) = model_similarity(&model).unwrap();
        assert_eq!(layers.len(), 2);
        for (l, a) in layers.iter().zip(model.adapters()) {
            let f = a.factors();
            let (fa, fb, fc) =
                (array2(&f.a).unwrap(), array2(&f.b).unwrap(), array1(&f.coefficients).unwrap());
            let want = mlae_core::expert_similarity_with_coefficients(fa.view(), fb.view(), fc.view(), 1);
            for i in 0..4 {
                for j in 0..4 {
                    assert!((l.matrix[i][j] - want[[i, j]]).abs() < 1e-12);
                }
            }
            // lambda_1 < 0 flips row and column 1
            assert!(l.matrix[0][1] * mlae_core::expert_similarity(fa.view(), fb.view(), 1)[[0, 1]] <= 0.0);
            assert!((l.mean.unwrap() - mlae_core::mean_pairwise(&want)).abs() < 1e-12);
        }
        let avg = layers.iter().map(|l| l.mean.unwrap()).sum::<f64>() / 2.0;
        assert!((mean.unwrap() - avg).abs() < 1e-12);
    }

    #[test]
    fn contributions_match_the_direct_formula() {
        tch::manual_seed(1);
        let mlae = mlae_core::MlaeSpec { experts: 3, expert_rank: 2, ..Default::default() };
        let lora = mlae_core::LoraSpec { rank: 3, ..Default::default() };
        for spec in [
            AdapterSpec { mlae, ..Default::default() },
            AdapterSpec { kind: mlae_core::AdapterKind::Lora, lora, ..Default::default() },
        ] {
            let model = tiny(&spec);
            let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
            let got = expert_contributions(&model, &x, 1, TargetLayer::Qkv).unwrap();
            let n = model.adapter(1, TargetLayer::Qkv).unwrap().factors().coefficients.size()[0];
            assert_eq!(n, 3);
            assert_eq!(got.size(), [2, n, 16]);
            // Direct: build each expert's matrix and apply it to every patch token.
            let f = model.adapter(1, TargetLayer::Qkv).unwrap().factors();
            let r = f.expert_rank as i64;
            let input = model.layer_input(&x, 1, TargetLayer::Qkv).unwrap().narrow(1, 1, 16);
            for i in 0..n {
                let ai = f.a.narrow(0, i * r, r);
                let bi = f.b.narrow(0, i * r, r);
                let w = bi.tr().mm(&ai) * f.coefficients.double_value(&[i]); // (out, in)
                let c = input.matmul(&w.tr()); // (N, P, out)
                let want = c.norm_scalaropt_dim(2.0, [2i64].as_slice(), false);
                let diff = (got.select(1, i) - want).abs().max().double_value(&[]);
                assert!(diff < 1e-4, "{} expert {i}: {diff}", spec.kind);
            }
        }
        // Linear layers without an adapter are refused with the adapted list.
        let model = tiny(&AdapterSpec::default());
        let x = Tensor::zeros([1, 3, 16, 16], (Kind::Float, Device::Cpu));
        let err = expert_contributions(&model, &x, 0, TargetLayer::Fc1).unwrap_err().to_string();
        assert!(err.contains("blocks.0.attn.qkv"), "{err}");
    }

    #[test]
    fn layouts_and_bar_groups() {
        assert_eq!(heatmap_size(3), (3 * HEATMAP_PANEL, HEATMAP_PANEL + HEATMAP_COLORBAR));
        assert_eq!(heatmap_size(13), (4 * HEATMAP_PANEL, 4 * HEATMAP_PANEL + HEATMAP_COLORBAR));
        assert_eq!(expert_grid_size(2, 8, 100), (900, EXPERT_HEADER + 200));
        let run = |task: &str, label: &str, mean: f64| RunSimilarity {
            run: PathBuf::from(format!("runs/{task}-{label}")),
            label: label.into(),
            task: task.into(),
            method: AdapterKind::Mlae,
            checkpoint: "last".into(),
            mean: Some(mean),
            layers: Vec::new(),
            heatmap: String::new(),
        };
        let (tasks, series, values) = bar_groups(&[
            run("a", "mlae", 0.1),
            run("a", "lora", 0.5),
            run("b", "mlae", 0.2),
            run("b", "mlae", 0.4),
        ]);
        assert_eq!(tasks, ["a", "b"]);
        assert_eq!(series, ["mlae", "lora"]);
        assert_eq!(values[0], [Some(0.1), Some(0.5)]);
        assert!((values[1][0].unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(values[1][1], None);
    }
}
