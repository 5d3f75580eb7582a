//! The fine-tuning methods, one module each, and the registry that ties them together.
//!
//! A method module holds its config section (with validation whose errors name the field),
//! its own plan type, its parameter count and its training schedule (see [`crate::Method`]
//! and [`crate::MethodPlan`]). The registry below is the only place that lists the methods:
//! from one line per method, `registry!` generates the [`AdapterKind`] variant and its config
//! name, the section field of [`AdapterSpec`], the [`AdapterPlan`] variant, [`AdapterKind::ALL`],
//! which keys each kind reads (a config writing any other is refused; `keys.rs`), the
//! examples conformance tests build, and the dispatch from spec to plan and from plan to its
//! answers. A new method is its module plus one registry line (and, for its libtorch layer,
//! one line in mlae-vit's adapter registry).

pub mod dmlora;
pub mod dora;
pub mod full;
mod keys;
pub mod linear_probe;
pub mod lora;
pub mod mlae;
mod renamed_keys;

use crate::error::SpecError;
use crate::method::{Method, MethodPlan, Section};
use crate::names::named_enum;
use crate::params::{ModelDims, ParamCount};
use crate::stages::TrainSchedule;
use crate::target::{LayerSite, TargetLayer};
use keys::{ReadKeys, Written, refuse_unread};
use serde::{Deserialize, Serialize, Serializer};
use std::marker::PhantomData;

/// The section a method reads: its own (`section`), another method's (`reads`), or none.
macro_rules! section_of {
    ($spec:ident; $field:ident; ) => {
        &$spec.$field
    };
    ($spec:ident; ; $shared:ident) => {
        &$spec.$shared
    };
    ($spec:ident; ; ) => {
        &()
    };
}

/// The name of that section, if any.
macro_rules! section_name {
    ($field:ident; ) => {
        Some(stringify!($field))
    };
    (; $shared:ident) => {
        Some(stringify!($shared))
    };
    (; ) => {
        None
    };
}

/// A default spec of `kind` holding `section` (a method's section value) in its place.
macro_rules! spec_with {
    ($kind:expr; $section:expr; $field:ident; ) => {
        AdapterSpec { kind: $kind, $field: $section, ..AdapterSpec::default() }
    };
    ($kind:expr; $section:expr; ; $shared:ident) => {
        AdapterSpec { kind: $kind, $shared: $section, ..AdapterSpec::default() }
    };
    ($kind:expr; $section:expr; ; ) => {{
        let () = $section;
        AdapterSpec { kind: $kind, ..AdapterSpec::default() }
    }};
}

/// One line per method:
/// `Variant = "config-name" => module::MethodType` then optionally
/// `, section field: SectionType` (a new `[adapter.field]` table) or `, reads field` (another
/// method's table), then `;`.
macro_rules! registry {
    ($(
        $(#[doc = $doc:literal])*
        $var:ident = $name:literal => $method:ty
        $(, section $field:ident : $section:ty)?
        $(, reads $shared:ident)?
        ;
    )+) => {
        /// Which fine-tuning method; the `kind` of `[adapter]`.
        ///
        /// ```
        /// use mlae_core::AdapterKind;
        /// let k: AdapterKind = "lora-dropout".parse().unwrap();
        /// assert_eq!(k, AdapterKind::LoraDropout);
        /// assert!(k.has_adapter());
        /// assert_eq!(k.section(), Some("lora"));
        /// assert_eq!(k.unread_keys(), ["input_dropout"]);
        /// assert!(!AdapterKind::LinearProbe.has_adapter());
        /// assert!(AdapterKind::ALL.contains(&AdapterKind::Dora));
        /// assert_eq!("lora_dropout".parse::<AdapterKind>().unwrap_err().field(), "adapter.kind");
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum AdapterKind {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $name)]
                $var,
            )+
        }

        named_enum!(AdapterKind, "adapter.kind", { $($var => $name),+ });

        impl AdapterKind {
            /// Whether this kind adds adapter layers beside the backbone's linear layers (the
            /// others train the head, or the whole backbone).
            pub fn has_adapter(self) -> bool {
                match self { $(AdapterKind::$var => <$method as Method>::ADAPTS_LAYERS,)+ }
            }

            /// The keys a reader checks first in a run's config of this kind (dotted paths).
            pub fn key_settings(self) -> &'static [&'static str] {
                match self { $(AdapterKind::$var => <$method as Method>::KEY_SETTINGS,)+ }
            }

            /// The `[adapter.<section>]` table this kind reads, if any.
            pub fn section(self) -> Option<&'static str> {
                match self {
                    $(AdapterKind::$var => section_name!($($field)?; $($shared)?),)+
                }
            }

            /// The keys of its section this kind does not read (a shared section's keys that
            /// another kind reads); a config of this kind must not write them.
            pub fn unread_keys(self) -> &'static [&'static str] {
                match self { $(AdapterKind::$var => <$method as Method>::UNREAD_KEYS,)+ }
            }

            /// Valid specs of this kind for a model of `depth` blocks (targets `[qkv]`) that
            /// between them switch on every feature of the method ([`Method::examples`]):
            /// what conformance tests build, so that a new kind is tested from its registry
            /// line alone.
            ///
            /// ```
            /// use mlae_core::AdapterKind;
            /// for kind in AdapterKind::ALL {
            ///     for spec in kind.examples(2) {
            ///         assert_eq!(spec.kind, *kind);
            ///         assert_eq!(spec.reduced(), spec, "only keys the kind reads");
            ///         spec.resolve(2).unwrap();
            ///     }
            /// }
            /// ```
            pub fn examples(self, depth: usize) -> Vec<AdapterSpec> {
                match self {
                    $(AdapterKind::$var => <$method as Method>::examples(depth)
                        .into_iter()
                        .map(|section| spec_with!(self; section; $($field)?; $($shared)?))
                        .collect(),)+
                }
            }
        }

        /// What to fine-tune and how: the `[adapter]` table of an experiment config.
        ///
        /// `kind` picks the method; `targets` lists the linear layers that get an adapter;
        /// each method's settings are in its own table (`[adapter.mlae]`, `[adapter.lora]`,
        /// `[adapter.dmlora]`). Every field has a default, so `kind = "lora"` alone is a
        /// complete spec. A config may write only what its kind reads: a table of another
        /// method, or a key of a shared table that the kind ignores (`update_dropout` for
        /// kind lora), is an error naming it, since it would have no effect. To switch the
        /// kind of a config, layer a method fragment on it that replaces its `[adapter]`
        /// (mlae-formats' layering: `unset`). Keys of the older flat layout
        /// (`adapter.experts`, `adapter.dropout`, ...) are errors naming their new place.
        ///
        /// A spec serialises (a run's `config.toml`, an adapter file's metadata) with the
        /// tables and keys its kind reads only, so what it writes always reads back.
        ///
        /// ```
        /// use mlae_core::{AdapterKind, AdapterSpec, TargetLayer};
        /// #[derive(serde::Deserialize)]
        /// struct Config { adapter: AdapterSpec }
        /// let c: Config = toml::from_str("[adapter]\nkind = 'lora'\n[adapter.lora]\nrank = 4").unwrap();
        /// assert_eq!(c.adapter.kind, AdapterKind::Lora);
        /// assert_eq!(c.adapter.targets, vec![TargetLayer::Qkv]);
        /// assert_eq!(c.adapter.lora.rank, 4);
        /// c.adapter.validate().unwrap();
        /// let old = toml::from_str::<Config>("[adapter]\nkind = 'lora'\nexperts = 4").err().unwrap();
        /// assert!(old.to_string().contains("adapter.experts was renamed: use adapter.mlae.experts (mlae), adapter.lora.rank"));
        /// let other = toml::from_str::<Config>("[adapter]\nkind = 'dora'\n[adapter.lora]\nupdate_dropout = 0.1").err().unwrap();
        /// assert!(other.to_string().contains("adapter.lora.update_dropout: kind dora does not read it (only lora-dropout does)"));
        /// let other = toml::from_str::<Config>("[adapter]\nkind = 'lora'\n[adapter.mlae]\nexperts = 4").err().unwrap();
        /// assert!(other.to_string().contains("adapter.mlae: kind lora does not read it (only mlae does)"));
        /// ```
        #[derive(Debug, Clone, PartialEq, Deserialize)]
        #[serde(try_from = "AdapterTable")]
        pub struct AdapterSpec {
            /// The method. Default mlae.
            pub kind: AdapterKind,
            /// Which linear layers of every block get an adapter. Default `[qkv]`.
            pub targets: Vec<TargetLayer>,
            $($(
                #[doc = concat!("`[adapter.", stringify!($field), "]`: the settings of the methods that read it.")]
                pub $field: $section,
            )?)+
        }

        impl Default for AdapterSpec {
            fn default() -> Self {
                AdapterSpec {
                    kind: AdapterKind::default(),
                    targets: vec![TargetLayer::Qkv],
                    $($( $field: <$section>::default(), )?)+
                }
            }
        }

        /// `kind`, `targets` and the kind's own section with the keys it reads.
        impl Serialize for AdapterSpec {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let spec = self;
                let mut s = serializer.serialize_struct("AdapterSpec", 3)?;
                s.serialize_field("kind", &self.kind)?;
                s.serialize_field("targets", &self.targets)?;
                match self.kind {
                    $(AdapterKind::$var => {
                        if let Some(name) = section_name!($($field)?; $($shared)?) {
                            let section = section_of!(spec; $($field)?; $($shared)?);
                            s.serialize_field(name, &ReadKeys::<$method>(section, PhantomData))?;
                        }
                    })+
                }
                s.end()
            }
        }

        /// The `[adapter]` table as written: each section with the keys it was written with
        /// (to refuse what the kind does not read). The keys of the older flat layout are kept apart: a config
        /// fails with their new names ([`AdapterSpec`]'s `Deserialize`), a stored spec is
        /// upgraded ([`AdapterSpec::from_stored`]).
        #[derive(Deserialize)]
        #[serde(default, deny_unknown_fields)]
        #[doc(hidden)]
        pub struct AdapterTable {
            kind: AdapterKind,
            targets: Vec<TargetLayer>,
            $($( $field: Option<Written<$section>>, )?)+
            // The flat layout's keys (see `renamed_keys`).
            experts: Option<usize>,
            expert_rank: Option<usize>,
            coeff_init: Option<f64>,
            lora_alpha: Option<f64>,
            dropout: Option<f64>,
            mask: Option<renamed_keys::FlatMask>,
        }

        impl Default for AdapterTable {
            fn default() -> Self {
                let s = AdapterSpec::default();
                AdapterTable {
                    kind: s.kind,
                    targets: s.targets,
                    $($( $field: None, )?)+
                    experts: None,
                    expert_rank: None,
                    coeff_init: None,
                    lora_alpha: None,
                    dropout: None,
                    mask: None,
                }
            }
        }

        impl AdapterTable {
            /// Each section present and the keys written in it.
            fn written(&self) -> Vec<(&'static str, &[String])> {
                let mut out = Vec::new();
                $($(
                    if let Some(w) = &self.$field {
                        out.push((stringify!($field), w.keys.as_slice()));
                    }
                )?)+
                out
            }

            fn split(self) -> (AdapterSpec, renamed_keys::FlatKeys) {
                let flat = renamed_keys::FlatKeys {
                    experts: self.experts,
                    expert_rank: self.expert_rank,
                    coeff_init: self.coeff_init,
                    lora_alpha: self.lora_alpha,
                    dropout: self.dropout,
                    mask: self.mask,
                };
                let spec = AdapterSpec {
                    kind: self.kind,
                    targets: self.targets,
                    $($( $field: self.$field.map(|w| w.value).unwrap_or_default(), )?)+
                };
                (spec, flat)
            }
        }

        impl TryFrom<AdapterTable> for AdapterSpec {
            type Error = SpecError;

            fn try_from(t: AdapterTable) -> Result<Self, SpecError> {
                let written: Vec<(&'static str, Vec<String>)> =
                    t.written().into_iter().map(|(s, k)| (s, k.to_vec())).collect();
                let (spec, flat) = t.split();
                flat.refuse()?;
                for (section, keys) in &written {
                    refuse_unread(spec.kind, section, keys)?;
                }
                Ok(spec)
            }
        }

        /// A resolved adapter: one variant per method, each holding the method's own plan.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum AdapterPlan {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $name)]
                $var(<$method as Method>::Plan),
            )+
        }

        impl AdapterPlan {
            /// The method.
            pub fn kind(&self) -> AdapterKind {
                match self { $(AdapterPlan::$var(_) => AdapterKind::$var,)+ }
            }

            /// The plan as what every method answers (sites, ranks, counts, schedule).
            pub fn method(&self) -> &dyn MethodPlan {
                match self { $(AdapterPlan::$var(p) => p,)+ }
            }
        }

        impl AdapterSpec {
            /// Checks every field the chosen kind reads; the error names the field.
            ///
            /// ```
            /// use mlae_core::{AdapterSpec, MaskSpec, MaskStrategy, MlaeSpec};
            /// assert!(AdapterSpec::default().validate().is_ok());
            /// let zero = AdapterSpec { mlae: MlaeSpec { experts: 0, ..Default::default() }, ..Default::default() };
            /// assert_eq!(zero.validate().unwrap_err().to_string(), "adapter.mlae.experts: must be at least 1");
            /// let mask = MaskSpec { strategy: MaskStrategy::Fixed, ..Default::default() };
            /// let fixed = AdapterSpec { mlae: MlaeSpec { expert_dropout: 0.3, mask, ..Default::default() }, ..Default::default() };
            /// assert_eq!(fixed.validate().unwrap_err().field(), "adapter.mlae.expert_dropout");
            /// ```
            pub fn validate(&self) -> Result<(), SpecError> {
                let spec = self;
                match self.kind {
                    $(AdapterKind::$var => <$method as Method>::validate(
                        section_of!(spec; $($field)?; $($shared)?),
                        &self.targets,
                    ),)+
                }
            }

            /// The spec as its kind reads it: the tables and keys the kind does not read at
            /// their defaults. This is what the spec serialises to and reads back as.
            ///
            /// ```
            /// use mlae_core::{AdapterKind, AdapterSpec, LoraSpec, MlaeSpec};
            /// let lora = LoraSpec { rank: 4, input_dropout: 0.1, update_dropout: 0.3, ..Default::default() };
            /// let mlae = MlaeSpec { experts: 2, ..Default::default() };
            /// let spec = AdapterSpec { kind: AdapterKind::Lora, lora, mlae, ..Default::default() };
            /// let lora = LoraSpec { rank: 4, input_dropout: 0.1, ..Default::default() };
            /// assert_eq!(spec.reduced(), AdapterSpec { kind: AdapterKind::Lora, lora, ..Default::default() });
            /// ```
            pub fn reduced(&self) -> AdapterSpec {
                let spec = self;
                let reduced = match self.kind {
                    $(AdapterKind::$var => {
                        let mut section = section_of!(spec; $($field)?; $($shared)?).clone();
                        Section::reset(&mut section, <$method as Method>::UNREAD_KEYS);
                        spec_with!(self.kind; section; $($field)?; $($shared)?)
                    })+
                };
                AdapterSpec { targets: self.targets.clone(), ..reduced }
            }

            /// A short label of the method and its main settings, for run names (e.g.
            /// `mlae-8x1-p0.5-init1`, `lora-r8`, `dmlora-k4-r2`).
            ///
            /// ```
            /// assert_eq!(mlae_core::AdapterSpec::default().label(), "mlae-8x1-p0-init1");
            /// ```
            pub fn label(&self) -> String {
                let spec = self;
                match self.kind {
                    $(AdapterKind::$var => <$method as Method>::label(section_of!(spec; $($field)?; $($shared)?)),)+
                }
            }

            /// Reads a spec the toolkit itself stored (a run directory's `config.toml`, an
            /// adapter file's metadata) in the current layout or in the flat layout of older
            /// versions, which is upgraded (the kind says what each old key meant). Tables
            /// and keys the kind does not read are ignored, as versions that wrote every
            /// table stored them. Configs a person writes go through `Deserialize`, where
            /// old keys and keys the kind does not read are errors.
            ///
            /// ```
            /// use mlae_core::{AdapterKind, AdapterSpec};
            /// let old = toml::Value::Table(toml::from_str("kind = 'lora-dropout'\nexperts = 4\ndropout = 0.3").unwrap());
            /// let spec = AdapterSpec::from_stored(old).unwrap();
            /// assert_eq!((spec.kind, spec.lora.rank, spec.lora.update_dropout), (AdapterKind::LoraDropout, 4, 0.3));
            /// ```
            pub fn from_stored<'de, D: serde::Deserializer<'de>>(stored: D) -> Result<AdapterSpec, D::Error> {
                let (mut spec, flat) = AdapterTable::deserialize(stored)?.split();
                flat.upgrade(&mut spec);
                Ok(spec)
            }

            /// Validates, then resolves the spec for a model with `depth` blocks into the
            /// method's plan.
            pub fn resolve(&self, depth: usize) -> Result<AdapterPlan, SpecError> {
                self.validate()?;
                if depth == 0 {
                    return Err(SpecError::invalid("model.depth", "the model has no blocks"));
                }
                let spec = self;
                Ok(match self.kind {
                    $(AdapterKind::$var => AdapterPlan::$var(<$method as Method>::resolve(
                        section_of!(spec; $($field)?; $($shared)?),
                        &self.targets,
                        depth,
                    )?),)+
                })
            }
        }
    };
}

registry! {
    /// Train only the classification head.
    LinearProbe = "linear-probe" => linear_probe::LinearProbe;
    /// Train every backbone parameter and the head.
    Full = "full" => full::Full;
    /// Plain LoRA, `base(x) + scale * B A dropout(x)` (PEFT's placement of dropout).
    Lora = "lora" => lora::Lora, section lora: lora::LoraSpec;
    /// LoRA with dropout on the update's output, `base(x) + dropout(scale * B A x)` (the
    /// paper's "LoRA+Dropout" baseline of Fig. 4).
    LoraDropout = "lora-dropout" => lora::LoraDropout, reads lora;
    /// Masked LoRA experts (the paper's method).
    Mlae = "mlae" => mlae::Mlae, section mlae: mlae::MlaeSpec;
    /// Dropout-mixture LoRA: several LoRA branches per layer, gradually dropped out.
    Dmlora = "dmlora" => dmlora::Dmlora, section dmlora: dmlora::DmloraSpec;
    /// DoRA: LoRA plus a trainable magnitude per output row (PEFT's `use_dora`).
    Dora = "dora" => dora::Dora, reads lora;
}

impl Default for AdapterKind {
    /// The paper's method.
    fn default() -> Self {
        AdapterKind::Mlae
    }
}

impl AdapterPlan {
    /// The adapted layers in plan order (the index is the `layer` of the mask draws); empty
    /// for methods without adapter layers.
    ///
    /// ```
    /// use mlae_core::AdapterSpec;
    /// let plan = AdapterSpec::default().resolve(12).unwrap();
    /// assert_eq!(plan.sites()[2].name(), "blocks.2.attn.qkv");
    /// ```
    pub fn sites(&self) -> Vec<LayerSite> {
        self.method().sites()
    }

    /// What trains at a step and at which learning rate.
    pub fn schedule(&self) -> &dyn TrainSchedule {
        self.method()
    }

    /// Whether the backbone's own weights train (full fine-tuning).
    pub fn trains_backbone(&self) -> bool {
        self.method().trains_backbone()
    }

    /// Parameter counts on a model of size `dims`.
    pub fn count_params(&self, dims: &ModelDims) -> ParamCount {
        let m = self.method();
        let mut count = ParamCount::new(m.adapter_params(dims), dims, self.trains_backbone());
        count.trainable -= m.frozen_adapter_params(dims);
        count
    }
}

/// Counts the parameters of `plan` on a model of size `dims`.
///
/// ```
/// use mlae_core::{count_params, AdapterSpec, ModelDims};
/// // the paper's MLAE: 8 experts on qkv of ViT-B/16's 12 blocks
/// let plan = AdapterSpec::default().resolve(12).unwrap();
/// let c = count_params(&plan, &ModelDims::vit_b16(100, 224));
/// assert_eq!(c.adapter, 295_008); // 12 * 8 * (768 + 2304 + 1), the paper's ~0.30M
/// assert_eq!(c.head, 76_900);
/// assert_eq!(c.trainable, 295_008 + 76_900);
/// assert_eq!(c.total, 85_798_656 + 76_900 + 295_008);
/// ```
pub fn count_params(plan: &AdapterPlan, dims: &ModelDims) -> ParamCount {
    plan.count_params(dims)
}

#[cfg(test)]
mod tests;
