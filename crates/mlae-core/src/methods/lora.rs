//! LoRA, and the paper's LoRA+Dropout baseline: one rank-r update `scale * B A` per adapted
//! layer, `scale = alpha / r`. Both kinds read `[adapter.lora]`:
//!
//! - `lora`: PEFT's semantics, `base(x) + scale * B A dropout(x)` (`input_dropout`);
//! - `lora-dropout`: dropout on the update's output, `base(x) + dropout(scale * B A x)`
//!   (`update_dropout`), the "LoRA+Dropout" of the MLAE paper's Fig. 4.
//!
//! Each kind reads its own dropout only; a config of one kind that writes the other's is
//! refused ([`Method::UNREAD_KEYS`]). DoRA reads the section as kind lora does.

use crate::error::SpecError;
use crate::method::{Method, MethodPlan, Section};
use crate::params::{ModelDims, layer_in_out};
use crate::stages::TrainSchedule;
use crate::target::{LayerSite, TargetLayer, check_targets, sites};
use serde::{Deserialize, Serialize, Serializer};

/// `[adapter.lora]`.
///
/// ```
/// use mlae_core::LoraSpec;
/// let s: LoraSpec = toml::from_str("rank = 4\nalpha = 8.0\ninput_dropout = 0.1").unwrap();
/// assert_eq!((s.rank, s.scale(), s.input_dropout, s.update_dropout), (4, 2.0, 0.1, 0.0));
/// assert!(toml::from_str::<LoraSpec>("dropout = 0.1").is_err()); // unknown field
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSpec {
    /// r, the rank of the update. Default 8.
    pub rank: usize,
    /// LoRA's alpha: the update is scaled by alpha / r. `None` means alpha = r (scale 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Kind lora: dropout on the adapter's input x (PEFT's `lora_dropout`). In [0, 1).
    /// Default 0.
    pub input_dropout: f64,
    /// Kind lora-dropout: dropout on the update's output `scale * B A x`. In [0, 1).
    /// Default 0.
    pub update_dropout: f64,
    /// Kind lora-dropout: what `update_dropout` drops. The paper's "dropout directly on dW"
    /// reads two ways; `output` (the default) drops elements of `dW x`, `matrix` drops
    /// elements of the matrix `dW` itself (one mask per forward pass, shared by the batch).
    pub update_dropout_on: UpdateDropoutOn,
}

/// Where kind lora-dropout drops (`adapter.lora.update_dropout_on`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateDropoutOn {
    /// Elements of the update's output `scale * B A x` (per token).
    #[default]
    Output,
    /// Elements of `dW = scale * B A` (DropConnect on the update; per forward pass).
    Matrix,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec {
            rank: 8,
            alpha: None,
            input_dropout: 0.0,
            update_dropout: 0.0,
            update_dropout_on: UpdateDropoutOn::Output,
        }
    }
}

/// `[adapter.lora]` as one kind stores it: the keys it reads (the same names, order and
/// omissions as `LoraSpec`'s own serialisation).
#[derive(Serialize)]
struct ReadLora {
    rank: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    alpha: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_dropout: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    update_dropout: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    update_dropout_on: Option<UpdateDropoutOn>,
}

/// The section is shared: each kind writes and keeps the keys it reads.
impl Section for LoraSpec {
    fn serialize_read<S: Serializer>(&self, unread: &[&str], serializer: S) -> Result<S::Ok, S::Error> {
        let read = |key: &str| !unread.contains(&key);
        ReadLora {
            rank: self.rank,
            alpha: self.alpha,
            input_dropout: read("input_dropout").then_some(self.input_dropout),
            update_dropout: read("update_dropout").then_some(self.update_dropout),
            update_dropout_on: read("update_dropout_on").then_some(self.update_dropout_on),
        }
        .serialize(serializer)
    }

    fn reset(&mut self, unread: &[&str]) {
        let default = LoraSpec::default();
        for key in unread {
            match *key {
                "input_dropout" => self.input_dropout = default.input_dropout,
                "update_dropout" => self.update_dropout = default.update_dropout,
                "update_dropout_on" => self.update_dropout_on = default.update_dropout_on,
                other => unreachable!("adapter.lora has no optional key {other}"),
            }
        }
    }
}

impl LoraSpec {
    /// The LoRA scale alpha / r (1 when `alpha` is `None`).
    ///
    /// ```
    /// use mlae_core::LoraSpec;
    /// assert_eq!(LoraSpec { alpha: Some(4.0), rank: 8, ..Default::default() }.scale(), 0.5);
    /// assert_eq!(LoraSpec::default().scale(), 1.0);
    /// ```
    pub fn scale(&self) -> f64 {
        match self.alpha {
            Some(alpha) if self.rank > 0 => alpha / self.rank as f64,
            _ => 1.0,
        }
    }

    fn validate_common(&self, targets: &[TargetLayer]) -> Result<(), SpecError> {
        check_targets(targets)?;
        SpecError::check_positive("adapter.lora.rank", self.rank)?;
        if let Some(alpha) = self.alpha
            && !(alpha.is_finite() && alpha > 0.0)
        {
            return Err(SpecError::out_of_range("adapter.lora.alpha", alpha, "(0, inf)"));
        }
        Ok(())
    }

    /// The examples of [`Method::examples`]: rank 4 at scale 2 (alpha 8), with `dropout` (a
    /// key of this section) at 0.2.
    pub(super) fn example(dropout: &str) -> LoraSpec {
        let mut s = LoraSpec { rank: 4, alpha: Some(8.0), ..Default::default() };
        match dropout {
            "input_dropout" => s.input_dropout = 0.2,
            "update_dropout" => s.update_dropout = 0.2,
            other => unreachable!("no dropout {other}"),
        }
        s
    }

    /// The plan of a kind that does not read `unread` (those keys at their defaults, so the
    /// plan holds only what the kind reads).
    fn plan(&self, targets: &[TargetLayer], depth: usize, unread: &[&str]) -> LoraPlan {
        let mut s = self.clone();
        s.reset(unread);
        LoraPlan {
            rank: s.rank,
            scale: s.scale(),
            input_dropout: s.input_dropout,
            update_dropout: s.update_dropout,
            update_dropout_on: s.update_dropout_on,
            layers: sites(targets, depth),
        }
    }
}

/// Kind `lora`.
#[derive(Debug)]
pub struct Lora;

/// Kind `lora-dropout`.
#[derive(Debug)]
pub struct LoraDropout;

impl Method for Lora {
    type Section = LoraSpec;
    type Plan = LoraPlan;
    const ADAPTS_LAYERS: bool = true;
    const KEY_SETTINGS: &'static [&'static str] = &["adapter.lora.rank", "adapter.lora.input_dropout"];
    const UNREAD_KEYS: &'static [&'static str] = &["update_dropout", "update_dropout_on"];

    fn validate(s: &LoraSpec, targets: &[TargetLayer]) -> Result<(), SpecError> {
        s.validate_common(targets)?;
        SpecError::check_unit_open("adapter.lora.input_dropout", s.input_dropout)
    }

    fn label(s: &LoraSpec) -> String {
        format!("lora-r{}", s.rank)
    }

    fn resolve(s: &LoraSpec, targets: &[TargetLayer], depth: usize) -> Result<LoraPlan, SpecError> {
        Ok(s.plan(targets, depth, Self::UNREAD_KEYS))
    }

    fn examples(_depth: usize) -> Vec<LoraSpec> {
        vec![LoraSpec::example("input_dropout")]
    }
}

impl Method for LoraDropout {
    type Section = LoraSpec;
    type Plan = LoraPlan;
    const ADAPTS_LAYERS: bool = true;
    const KEY_SETTINGS: &'static [&'static str] =
        &["adapter.lora.rank", "adapter.lora.update_dropout", "adapter.lora.update_dropout_on"];
    const UNREAD_KEYS: &'static [&'static str] = &["input_dropout"];

    fn validate(s: &LoraSpec, targets: &[TargetLayer]) -> Result<(), SpecError> {
        s.validate_common(targets)?;
        SpecError::check_unit_open("adapter.lora.update_dropout", s.update_dropout)
    }

    fn label(s: &LoraSpec) -> String {
        let on = if s.update_dropout_on == UpdateDropoutOn::Matrix { "-matrix" } else { "" };
        format!("lora-dropout-r{}-p{}{on}", s.rank, s.update_dropout)
    }

    fn resolve(s: &LoraSpec, targets: &[TargetLayer], depth: usize) -> Result<LoraPlan, SpecError> {
        Ok(s.plan(targets, depth, Self::UNREAD_KEYS))
    }

    /// Both readings of the update's dropout.
    fn examples(_depth: usize) -> Vec<LoraSpec> {
        let output = LoraSpec::example("update_dropout");
        let matrix = LoraSpec { update_dropout_on: UpdateDropoutOn::Matrix, ..output.clone() };
        vec![output, matrix]
    }
}

/// A resolved LoRA (either kind): the same rank, scale and dropouts on every adapted layer.
/// Exactly one of the dropouts can be non-zero: `input_dropout` for kind lora,
/// `update_dropout` for kind lora-dropout.
///
/// ```
/// use mlae_core::{AdapterKind, AdapterPlan, AdapterSpec, LoraSpec};
/// let lora = LoraSpec { alpha: Some(16.0), input_dropout: 0.1, update_dropout: 0.3, ..Default::default() };
/// let spec = AdapterSpec { kind: AdapterKind::Lora, lora, ..Default::default() };
/// let AdapterPlan::Lora(plan) = spec.resolve(12).unwrap() else { unreachable!() };
/// assert_eq!(plan.layers.len(), 12);
/// assert_eq!((plan.scale, plan.input_dropout, plan.update_dropout), (2.0, 0.1, 0.0)); // alpha / r = 16 / 8
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraPlan {
    /// r.
    pub rank: usize,
    /// alpha / r.
    pub scale: f64,
    /// Dropout on the adapter's input (kind lora).
    pub input_dropout: f64,
    /// Dropout on the update (kind lora-dropout).
    pub update_dropout: f64,
    /// What `update_dropout` drops: the update's output or the matrix dW.
    #[serde(default)]
    pub update_dropout_on: UpdateDropoutOn,
    /// The adapted layers, in plan order.
    pub layers: Vec<LayerSite>,
}

impl TrainSchedule for LoraPlan {}

impl MethodPlan for LoraPlan {
    fn sites(&self) -> Vec<LayerSite> {
        self.layers.clone()
    }

    fn update_rank(&self, site: LayerSite) -> usize {
        if self.layers.contains(&site) { self.rank } else { 0 }
    }

    fn adapter_params(&self, dims: &ModelDims) -> usize {
        low_rank_params(&self.layers, self.rank, false, dims)
    }
}

/// The parameters of a rank-`rank` pair A, B on each of `layers`, `r (in + out)` per layer,
/// plus with `magnitude` one value per output row (DoRA's `m`): LoRA's count and DoRA's.
pub(super) fn low_rank_params(layers: &[LayerSite], rank: usize, magnitude: bool, dims: &ModelDims) -> usize {
    layers
        .iter()
        .map(|l| {
            let (i, o) = layer_in_out(l.target, dims);
            rank * (i + o) + if magnitude { o } else { 0 }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_reads_its_own_dropout() {
        let s = LoraSpec { input_dropout: 0.2, update_dropout: 1.5, ..Default::default() };
        // lora does not read update_dropout, so its value is not checked (a config cannot set
        // it: the registry refuses it; a spec built in code may hold anything there)
        assert_eq!(Lora::resolve(&s, &[TargetLayer::Qkv], 2).unwrap().input_dropout, 0.2);
        Lora::validate(&s, &[TargetLayer::Qkv]).unwrap();
        let e = LoraDropout::validate(&s, &[TargetLayer::Qkv]).unwrap_err();
        assert_eq!(e.to_string(), "adapter.lora.update_dropout: 1.5 is outside [0, 1)");
        let s = LoraSpec { input_dropout: 0.2, update_dropout: 0.4, ..Default::default() };
        let p = LoraDropout::resolve(&s, &[TargetLayer::Qkv], 2).unwrap();
        assert_eq!((p.input_dropout, p.update_dropout), (0.0, 0.4));
        assert_eq!(p.update_dropout_on, UpdateDropoutOn::Output, "the default reading");
    }

    #[test]
    fn the_matrix_reading_is_a_key_with_two_values() {
        let s: LoraSpec = toml::from_str("update_dropout = 0.5\nupdate_dropout_on = 'matrix'").unwrap();
        let p = LoraDropout::resolve(&s, &[TargetLayer::Qkv], 1).unwrap();
        assert_eq!(p.update_dropout_on, UpdateDropoutOn::Matrix);
        assert_eq!(LoraDropout::label(&s), "lora-dropout-r8-p0.5-matrix");
        let e = toml::from_str::<LoraSpec>("update_dropout_on = 'weights'").unwrap_err();
        assert!(e.to_string().contains("output") && e.to_string().contains("matrix"), "{e}");
        // a plan written before the key existed still reads
        let old: LoraPlan = serde_json::from_str(
            r#"{"rank":8,"scale":1.0,"input_dropout":0.0,"update_dropout":0.5,"layers":[]}"#,
        )
        .unwrap();
        assert_eq!(old.update_dropout_on, UpdateDropoutOn::Output);
    }

    #[test]
    fn invalid_numbers_name_their_field() {
        let t = [TargetLayer::Qkv];
        let field = |s: LoraSpec| Lora::validate(&s, &t).unwrap_err().field().to_string();
        assert_eq!(field(LoraSpec { rank: 0, ..Default::default() }), "adapter.lora.rank");
        assert_eq!(field(LoraSpec { alpha: Some(-1.0), ..Default::default() }), "adapter.lora.alpha");
        assert_eq!(
            field(LoraSpec { input_dropout: 1.0, ..Default::default() }),
            "adapter.lora.input_dropout"
        );
        assert_eq!(Lora::validate(&LoraSpec::default(), &[]).unwrap_err().field(), "adapter.targets");
    }

    #[test]
    fn each_kind_stores_the_keys_it_reads() {
        let s = LoraSpec { alpha: Some(2.0), input_dropout: 0.1, update_dropout: 0.3, ..Default::default() };
        // the keys written (serde_json's maps sort them)
        let text = |unread: &[&str]| -> Vec<String> {
            serde_json::to_value(ReadKeysOf(&s, unread))
                .unwrap()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        // nothing unread: exactly the section's own serialisation, key for key
        assert_eq!(serde_json::to_value(ReadKeysOf(&s, &[])).unwrap(), serde_json::to_value(&s).unwrap());
        assert_eq!(text(Lora::UNREAD_KEYS), ["alpha", "input_dropout", "rank"]);
        assert_eq!(text(LoraDropout::UNREAD_KEYS), ["alpha", "rank", "update_dropout", "update_dropout_on"]);
        let mut kept = s.clone();
        kept.reset(LoraDropout::UNREAD_KEYS);
        assert_eq!(kept, LoraSpec { input_dropout: 0.0, ..s.clone() });
        kept.reset(Lora::UNREAD_KEYS);
        assert_eq!(kept, LoraSpec { alpha: Some(2.0), ..Default::default() });
    }

    /// Serialises a section through `serialize_read`.
    struct ReadKeysOf<'a>(&'a LoraSpec, &'a [&'a str]);

    impl Serialize for ReadKeysOf<'_> {
        fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
            self.0.serialize_read(self.1, ser)
        }
    }

    #[test]
    fn counts() {
        let dims = ModelDims::vit_b16(100, 224);
        let p = Lora::resolve(&LoraSpec::default(), &[TargetLayer::Qkv], 12).unwrap();
        assert_eq!(p.adapter_params(&dims), 12 * 8 * 3072);
        let p = Lora::resolve(&LoraSpec { rank: 4, ..Default::default() }, &[TargetLayer::Fc2], 2).unwrap();
        assert_eq!(p.adapter_params(&dims), 2 * 4 * (3072 + 768));
    }
}
