//! # virtex-optim
//!
//! The optimisation of VirTex ([Desai & Johnson, CVPR 2021](https://arxiv.org/abs/2006.06666),
//! upstream `virtex/optim/`) on top of `burn::optim`, for any burn module:
//!
//! - [`Lookahead`]: Lookahead (k = 5, α = 0.5) around any burn [`Optimizer`](burn::optim::Optimizer),
//!   itself an `Optimizer`; its record keeps the slow weights and the counter.
//! - [`TorchSgdConfig`]: burn's SGD configured to be exactly `torch.optim.SGD` (coupled weight
//!   decay, momentum buffer = first gradient, dampening 0, optional Nesterov);
//!   [`TorchAdamWConfig`]: burn's AdamW with torch's defaults; [`OptimizerName`] /
//!   [`InnerOptimizer`]: either one behind one type (upstream's `OPTIM.OPTIMIZER_NAME`).
//! - [`ParamGroupsConfig`]: LR groups and weight decay chosen by regexes on parameter **paths**
//!   (`visual.cnn.layer1.0.conv1.weight`), with [`ParamGroupsConfig::describe`] listing every
//!   parameter's group, LR, decay and size.
//! - [`LrScheduleConfig`]: linear warmup, then cosine (cos²) / linear / multistep / none; the
//!   resulting [`LrSchedule`] is burn's [`LrScheduler`](burn::lr_scheduler::LrScheduler),
//!   yielding the LR multiplier of each iteration.
//! - [`clip_grad_norm`]: `torch.nn.utils.clip_grad_norm_` (one global L2 norm).
//! - [`GroupedOptimizer`]: all of the above as one training-loop call,
//!   `step(module, grads) -> (module, StepReport)`, skipping steps with non-finite gradients,
//!   with a record that resumes a run exactly. It is also burn's
//!   [`Optimizer`](burn::optim::Optimizer), where `lr` is the schedule multiplier applied to
//!   every group's base LR (see [`GroupedOptimizer`] § As burn's `Optimizer`), for
//!   burn-train's `Learner` and other loops written against burn's traits.
//!
//! The crate knows modules and parameter paths, not VirTex's model: the defaults reproduce
//! upstream's configuration for a model whose fields are named like upstream's modules.
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::GradientsParams;
//! use burn::tensor::Tensor;
//! use virtex_optim::{GroupedOptimizerConfig, LrScheduleConfig};
//!
//! type B = Autodiff<Flex>;
//! let device = Default::default();
//! let mut model: Linear<B> = LinearConfig::new(8, 2).init(&device);
//! let config = GroupedOptimizerConfig::new()
//!     .with_schedule(LrScheduleConfig::new().with_warmup_steps(1).with_total_steps(100));
//! let mut optim = config.init(&model).unwrap();
//! let loss = model.forward(Tensor::<B, 2>::ones([4, 8], &device)).sum();
//! let grads = GradientsParams::from_grads(loss.backward(), &model);
//! let (updated, report) = optim.step(model, grads);
//! model = updated;
//! assert_eq!(report.lr_multiplier, 0.0); // iteration 1 runs at LR 0 under warmup, as upstream
//! assert!(report.grad_norm > 0.0 && !report.skipped);
//! # let _ = model;
//! ```
#![warn(missing_docs)]

mod choice;
mod clip;
mod error;
mod grouped;
mod groups;
mod lookahead;
mod paths;
mod schedule;
mod sgd;

pub use choice::{
    InnerOptimizer, InnerOptimizerItem, InnerOptimizerRecord, InnerRecord, OptimizerName,
    TorchAdamW, TorchAdamWConfig,
};
pub use clip::{clip_grad_norm, grad_norm, ClipOutcome};
pub use error::{LookaheadError, Result};
pub use grouped::{
    GroupLr, GroupedOptimizer, GroupedOptimizerConfig, GroupedOptimizerRecord, ParamStateRecord,
    StepReport,
};
pub use groups::{
    GroupRule, GroupSummary, ParamGroup, ParamGroupsConfig, ParamInfo, ParamTable, VIRTEX_NO_DECAY,
};
pub use lookahead::{Lookahead, LookaheadConfig, LookaheadRecord, SlowWeightRecord};
pub use paths::{trainable_params, ParamEntry};
pub use schedule::{LrDecay, LrSchedule, LrScheduleConfig};
pub use sgd::{FusedMomentumState, FusedSgd, FusedSgdState, TorchSgd, TorchSgdConfig};

/// The README's snippets, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
