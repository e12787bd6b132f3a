//! `torch.optim.SGD` on burn.
//!
//! burn 0.21's [`Sgd`] computes, per parameter (read in `burn-optim-0.21.0/src/optim/sgd.rs`,
//! `momentum.rs`, `decay.rs`):
//!
//! ```text
//! g ← g + wd·p                              (coupled L2, before momentum)
//! v ← g                      on the first step
//! v ← μ·v + (1 − dampening)·g  afterwards
//! g ← g + μ·v  if nesterov, else g ← v
//! p ← p − lr·g
//! ```
//!
//! which is exactly `torch.optim.SGD` — *provided dampening is 0*. burn's `MomentumConfig`
//! defaults to `dampening = 0.1`, torch's to 0, so using burn's defaults silently changes every
//! update after the first by 10 %. [`TorchSgdConfig`] builds burn's `Sgd` with torch's
//! semantics; the parity fixtures of this crate check it against `torch.optim.SGD`.

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{Sgd, SgdConfig};
use burn::tensor::backend::AutodiffBackend;

use crate::error::{invalid, Result};

/// burn's SGD as built by [`TorchSgdConfig`]: `torch.optim.SGD` semantics.
pub type TorchSgd<M, B> = OptimizerAdaptor<Sgd<<B as AutodiffBackend>::InnerBackend>, M, B>;

/// `torch.optim.SGD` hyper-parameters other than the learning rate and weight decay (those
/// come per parameter group). Defaults: VirTex's (`momentum 0.9`, no Nesterov, dampening 0).
#[derive(Config, Debug, PartialEq)]
pub struct TorchSgdConfig {
    /// Momentum factor μ (0 disables momentum: no buffer is kept).
    #[config(default = 0.9)]
    pub momentum: f64,
    /// Nesterov momentum (requires μ > 0, as in torch).
    #[config(default = false)]
    pub nesterov: bool,
}

impl TorchSgdConfig {
    /// Checks `momentum ≥ 0` and that Nesterov has a momentum.
    pub fn validate(&self) -> Result<()> {
        if !(self.momentum >= 0.0 && self.momentum.is_finite()) {
            return Err(invalid(
                "sgd.momentum",
                self.momentum,
                "a finite number ≥ 0",
            ));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err(invalid(
                "sgd.nesterov",
                self.nesterov,
                "Nesterov momentum requires sgd.momentum > 0 (as in torch)",
            ));
        }
        Ok(())
    }

    /// burn's [`SgdConfig`] with these settings, coupled weight decay `weight_decay` and
    /// dampening 0.
    pub fn burn_config(&self, weight_decay: f64) -> Result<SgdConfig> {
        self.validate()?;
        if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
            return Err(invalid("weight_decay", weight_decay, "a finite number ≥ 0"));
        }
        let momentum = (self.momentum > 0.0).then_some(MomentumConfig {
            momentum: self.momentum,
            dampening: 0.0,
            nesterov: self.nesterov,
        });
        // torch skips the decay term when weight_decay == 0; so does burn with `None`.
        let decay = (weight_decay > 0.0).then_some(WeightDecayConfig {
            penalty: weight_decay as f32,
        });
        Ok(SgdConfig::new()
            .with_momentum(momentum)
            .with_weight_decay(decay))
    }

    /// The optimizer for one parameter group with coupled weight decay `weight_decay`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        weight_decay: f64,
    ) -> Result<TorchSgd<M, B>> {
        Ok(self.burn_config(weight_decay)?.init())
    }
}
