//! Upstream's `OPTIM.OPTIMIZER_NAME`: `sgd` (every released config) or `adamw`, as one optimizer
//! type, so a training loop holds either without being generic over it.
//!
//! `torch.optim.AdamW` (as upstream builds it: `betas=(0.9, 0.999)`, `eps=1e-8`, the group's
//! weight decay) and burn 0.21's [`AdamW`] compute the same update (read in
//! `burn-optim-0.21.0/src/optim/adamw.rs`):
//!
//! ```text
//! p ← p · (1 − lr·wd)                       (decoupled decay, before the moments)
//! m ← β₁·m + (1 − β₁)·g,   v ← β₂·v + (1 − β₂)·g²
//! p ← p − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
//! ```
//!
//! torch writes the denominator as `√v / √(1 − β₂ᵗ) + ε`, the same number up to rounding. Only
//! burn's default ε differs (1e-5 against torch's 1e-8); [`TorchAdamWConfig`] sets torch's.

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{
    AdamW, AdamWConfig, GradientsParams, LearningRate, MultiGradientsParams, Optimizer,
};
use burn::record::{PrecisionSettings, Record};
use burn::serde::{Deserialize, Serialize};
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::error::{invalid, Result};
use crate::sgd::{TorchSgd, TorchSgdConfig};

/// burn's AdamW as built by [`TorchAdamWConfig`]: `torch.optim.AdamW` semantics.
pub type TorchAdamW<M, B> = OptimizerAdaptor<AdamW, M, B>;

/// `torch.optim.AdamW` hyper-parameters other than the learning rate and weight decay (those
/// come per parameter group). Defaults: torch's, which upstream keeps.
#[derive(Config, Debug, PartialEq)]
pub struct TorchAdamWConfig {
    /// β₁, the first moment's decay.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// β₂, the second moment's decay.
    #[config(default = 0.999)]
    pub beta_2: f64,
    /// ε added to the denominator (torch: 1e-8; burn's own default is 1e-5).
    #[config(default = 1e-8)]
    pub epsilon: f64,
}

impl TorchAdamWConfig {
    /// Checks `0 ≤ β < 1` and `ε > 0`.
    pub fn validate(&self) -> Result<()> {
        for (setting, beta) in [("adamw.beta_1", self.beta_1), ("adamw.beta_2", self.beta_2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(invalid(setting, beta, "a number in [0, 1)"));
            }
        }
        if !(self.epsilon > 0.0 && self.epsilon.is_finite()) {
            return Err(invalid(
                "adamw.epsilon",
                self.epsilon,
                "a finite number > 0",
            ));
        }
        Ok(())
    }

    /// burn's [`AdamWConfig`] with these settings and decoupled weight decay `weight_decay`.
    pub fn burn_config(&self, weight_decay: f64) -> Result<AdamWConfig> {
        self.validate()?;
        if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
            return Err(invalid("weight_decay", weight_decay, "a finite number ≥ 0"));
        }
        Ok(AdamWConfig::new()
            .with_beta_1(self.beta_1 as f32)
            .with_beta_2(self.beta_2 as f32)
            .with_epsilon(self.epsilon as f32)
            .with_weight_decay(weight_decay as f32))
    }

    /// The optimizer for one parameter group with decoupled weight decay `weight_decay`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        weight_decay: f64,
    ) -> Result<TorchAdamW<M, B>> {
        Ok(self.burn_config(weight_decay)?.init())
    }
}

/// Which optimizer runs inside every parameter group (upstream's `OPTIM.OPTIMIZER_NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(crate = "burn::serde", rename_all = "lowercase")]
pub enum OptimizerName {
    /// `torch.optim.SGD` ([`TorchSgdConfig`]); every released VirTex config.
    #[default]
    Sgd,
    /// `torch.optim.AdamW` ([`TorchAdamWConfig`]).
    AdamW,
}

impl OptimizerName {
    /// Every name, in the order users see them.
    pub const ALL: [OptimizerName; 2] = [OptimizerName::Sgd, OptimizerName::AdamW];

    /// `sgd` or `adamw`, as upstream's config writes them.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sgd => "sgd",
            Self::AdamW => "adamw",
        }
    }

    /// Parses upstream's name (`sgd` / `adamw`, any case).
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|candidate| candidate.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| invalid("optimizer_name", name, "`sgd` or `adamw`"))
    }
}

/// The optimizer of one parameter group, SGD or AdamW, behind one type (what
/// [`GroupedOptimizerConfig::init`](crate::GroupedOptimizerConfig::init) builds).
#[derive(Clone)]
pub enum InnerOptimizer<M: AutodiffModule<B>, B: AutodiffBackend> {
    /// torch-exact SGD.
    Sgd(TorchSgd<M, B>),
    /// torch-exact AdamW.
    AdamW(TorchAdamW<M, B>),
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> InnerOptimizer<M, B> {
    /// Which optimizer this is.
    pub fn name(&self) -> OptimizerName {
        match self {
            Self::Sgd(_) => OptimizerName::Sgd,
            Self::AdamW(_) => OptimizerName::AdamW,
        }
    }
}

/// The state of an [`InnerOptimizer`]: the inner optimizer's own record (`SR` for SGD, `AR`
/// for AdamW), tagged by its name so that one optimizer's state is never read as the other's.
pub enum InnerOptimizerRecord<SR, AR> {
    /// SGD's momentum buffers.
    Sgd(SR),
    /// AdamW's moments and step counts.
    AdamW(AR),
}

/// The serialised form of an [`InnerOptimizerRecord`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(crate = "burn::serde")]
pub enum InnerOptimizerItem<SI, AI> {
    /// SGD's item.
    Sgd(SI),
    /// AdamW's item.
    AdamW(AI),
}

// By hand: burn's derive needs the backend among the enum's generics, which a record generic
// over its variants' records does not have.
impl<SR: Record<B>, AR: Record<B>, B: Backend> Record<B> for InnerOptimizerRecord<SR, AR> {
    type Item<S: PrecisionSettings> = InnerOptimizerItem<SR::Item<S>, AR::Item<S>>;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        match self {
            Self::Sgd(record) => InnerOptimizerItem::Sgd(record.into_item()),
            Self::AdamW(record) => InnerOptimizerItem::AdamW(record.into_item()),
        }
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, device: &B::Device) -> Self {
        match item {
            InnerOptimizerItem::Sgd(item) => Self::Sgd(SR::from_item(item, device)),
            InnerOptimizerItem::AdamW(item) => Self::AdamW(AR::from_item(item, device)),
        }
    }
}

/// The record type of [`InnerOptimizer`] for module `M`.
pub type InnerRecord<M, B> = InnerOptimizerRecord<
    <TorchSgd<M, B> as Optimizer<M, B>>::Record,
    <TorchAdamW<M, B> as Optimizer<M, B>>::Record,
>;

impl<M, B> Optimizer<M, B> for InnerOptimizer<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    type Record = InnerRecord<M, B>;

    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        match self {
            Self::Sgd(optim) => optim.step(lr, module, grads),
            Self::AdamW(optim) => optim.step(lr, module, grads),
        }
    }

    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        match self {
            Self::Sgd(optim) => optim.step_multi(lr, module, grads),
            Self::AdamW(optim) => optim.step_multi(lr, module, grads),
        }
    }

    fn to_record(&self) -> Self::Record {
        match self {
            Self::Sgd(optim) => InnerOptimizerRecord::Sgd(optim.to_record()),
            Self::AdamW(optim) => InnerOptimizerRecord::AdamW(optim.to_record()),
        }
    }

    /// # Panics
    /// If the record is another optimizer's (burn's signature has no error). Checkpoints carry
    /// the configuration that names the optimizer, so a loop that rebuilds the optimizer from
    /// it never mixes them.
    fn load_record(self, record: Self::Record) -> Self {
        match (self, record) {
            (Self::Sgd(optim), InnerOptimizerRecord::Sgd(record)) => {
                Self::Sgd(optim.load_record(record))
            }
            (Self::AdamW(optim), InnerOptimizerRecord::AdamW(record)) => {
                Self::AdamW(optim.load_record(record))
            }
            (optim, record) => panic!(
                "the optimizer state was saved by {}, but this optimizer is {}",
                match record {
                    InnerOptimizerRecord::Sgd(_) => "sgd",
                    InnerOptimizerRecord::AdamW(_) => "adamw",
                },
                optim.name().name()
            ),
        }
    }
}

/// Builds the group optimizer `name` names, with coupled (SGD) or decoupled (AdamW) weight
/// decay `weight_decay`.
pub(crate) fn inner_optimizer<M: AutodiffModule<B>, B: AutodiffBackend>(
    name: OptimizerName,
    sgd: &TorchSgdConfig,
    adamw: &TorchAdamWConfig,
    weight_decay: f64,
) -> Result<InnerOptimizer<M, B>> {
    Ok(match name {
        OptimizerName::Sgd => InnerOptimizer::Sgd(sgd.init(weight_decay)?),
        OptimizerName::AdamW => InnerOptimizer::AdamW(adamw.init(weight_decay)?),
    })
}
