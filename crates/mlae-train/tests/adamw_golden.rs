//! AdamW against torch.optim.AdamW: fixture from xtask/python/make_train_fixtures.py.

use mlae_train::optim::{AdamW, AdamWConfig, ParamGroup};
use std::collections::HashMap;
use tch::{Kind, Tensor};

#[test]
fn adamw_reproduces_pytorch_step_by_step() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/adamw.safetensors");
    let fx: HashMap<String, Tensor> = Tensor::read_safetensors(path).unwrap().into_iter().collect();
    let names = ["a", "b", "lam"];
    let params: Vec<Tensor> =
        names.iter().map(|n| fx[&format!("init.{n}")].copy().set_requires_grad(true)).collect();
    let mut opt = AdamW::new(
        AdamWConfig::default(),
        vec![ParamGroup { name: "all".into(), weight_decay: 1e-4 }],
        names.iter().zip(&params).map(|(n, p)| (n.to_string(), p.shallow_clone(), 0)).collect(),
    );
    let lrs = Vec::<f64>::try_from(&fx["lrs"]).unwrap();
    let max_norm = fx["max_norm"].double_value(&[0]);
    for (step, lr) in lrs.iter().enumerate() {
        opt.zero_grad();
        // Inject the fixture's gradients through a linear loss: d/dp sum(p * g) = g.
        let mut loss = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        for (n, p) in names.iter().zip(&params) {
            if let Some(g) = fx.get(&format!("grad{step}.{n}")) {
                loss += (p * g).sum(Kind::Float);
            }
        }
        loss.backward();
        if step == 2 {
            // b got no gradient in PyTorch at this step; here it was never part of this
            // loss, so its grad is the zeroed one from step 1: freeze it for this step.
            opt.set_frozen(true, |n| n == "b");
        }
        let norm = opt.clip_grad_norm(max_norm);
        let expected_norm = fx[&format!("norm{step}")].double_value(&[0]);
        assert!(
            (norm - expected_norm).abs() < 1e-4 * expected_norm.max(1.0),
            "step {step}: norm {norm} vs {expected_norm}"
        );
        opt.step(&[*lr]);
        opt.set_frozen(false, |_| true);
        for (n, p) in names.iter().zip(&params) {
            let expected = &fx[&format!("after{step}.{n}")];
            let diff = (p - expected).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "step {step}, {n}: max |diff| = {diff}");
        }
    }
}
