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
//!
//! The optimizer the training loop runs, [`TorchSgd`], computes that update with
//! [`virtex_kernels::sgd_update`]: one pass over parameter, gradient and momentum buffer on the
//! CPU backend (bit for bit burn's result, without burn's five allocating passes), burn's ops
//! elsewhere. Its state has the fields of burn's `SgdState` (`momentum.velocity`), so saved
//! records keep their layout.

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{LearningRate, SgdConfig, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use virtex_kernels::{sgd_update, SgdUpdate};

use crate::error::{invalid, Result};

/// The SGD of [`TorchSgdConfig`]: `torch.optim.SGD` semantics, one fused pass per parameter.
pub type TorchSgd<M, B> = OptimizerAdaptor<FusedSgd, M, B>;

/// `torch.optim.SGD`'s update for one parameter group (coupled weight decay, momentum with
/// dampening 0, optional Nesterov), as a burn [`SimpleOptimizer`] whose step is
/// [`virtex_kernels::sgd_update`]. Built by [`TorchSgdConfig::init`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedSgd {
    weight_decay: Option<f32>,
    momentum: Option<f32>,
    nesterov: bool,
}

/// The momentum buffer of one parameter (the fields of burn's `MomentumState`).
#[derive(Record, Clone)]
pub struct FusedMomentumState<B: Backend, const D: usize> {
    /// `v`, shaped like the parameter.
    pub velocity: Tensor<B, D>,
}

/// The state of [`FusedSgd`] for one parameter (the fields of burn's `SgdState`).
#[derive(Record, Clone)]
pub struct FusedSgdState<B: Backend, const D: usize> {
    /// The momentum buffer; `None` without momentum.
    pub momentum: Option<FusedMomentumState<B, D>>,
}

impl<B: Backend> SimpleOptimizer<B> for FusedSgd {
    type State<const D: usize> = FusedSgdState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let velocity = state
            .and_then(|state| state.momentum)
            .map(|momentum| momentum.velocity);
        let update = SgdUpdate {
            lr,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            nesterov: self.nesterov,
        };
        let (tensor, velocity) = sgd_update(tensor, grad, velocity, &update);
        let state = FusedSgdState {
            momentum: velocity.map(|velocity| FusedMomentumState { velocity }),
        };
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        FusedSgdState {
            momentum: state.momentum.map(|momentum| FusedMomentumState {
                velocity: momentum.velocity.to_device(device),
            }),
        }
    }
}

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
        // The same checks, and the same settings, as burn's configuration.
        self.burn_config(weight_decay)?;
        Ok(OptimizerAdaptor::from(FusedSgd {
            weight_decay: (weight_decay > 0.0).then_some(weight_decay as f32),
            // burn keeps μ as the backend's float element (f32 here) and so does the kernel.
            momentum: (self.momentum > 0.0).then_some(self.momentum as f32),
            nesterov: self.nesterov,
        }))
    }
}
