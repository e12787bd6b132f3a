//! Global gradient-norm clipping with `torch.nn.utils.clip_grad_norm_` semantics.
//!
//! burn's `GradientClipping::Norm` clips every tensor by its own norm; VirTex clips the L2 norm
//! of all gradients taken together:
//!
//! ```text
//! total = sqrt(Σ_p ‖g_p‖²)          over the parameters that have a gradient
//! coef  = min(1, max_norm / (total + 1e-6))
//! g_p  ← coef · g_p
//! ```

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

/// Outcome of [`clip_grad_norm`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipOutcome {
    /// Global L2 norm of the gradients before clipping (what torch returns; VirTex logs it).
    pub total_norm: f64,
    /// Factor the gradients were multiplied by: `min(1, max_norm / (total_norm + 1e-6))`,
    /// 1 when the norm is not finite (the gradients are then left unchanged).
    pub coefficient: f64,
}

/// Global L2 norm of the gradients in `grads` of `module`'s trainable parameters.
///
/// Reads one scalar back from the device. Returns a non-finite value when any gradient holds
/// an infinity or a NaN (or when the sum of squares overflows, |g| ≳ 1e19 in f32).
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut visitor = SquaredNorms::<B> {
        grads,
        seen: HashSet::new(),
        sums: Vec::new(),
    };
    module.visit(&mut visitor);
    if visitor.sums.is_empty() {
        return 0.0;
    }
    let total: f64 = Tensor::cat(visitor.sums, 0).sum().into_scalar().elem();
    total.sqrt()
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)` over `module`'s trainable parameters.
///
/// The coefficient is computed in f64 from the f32 norm (torch computes it in f32; the
/// difference is below one f32 ulp of the coefficient).
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, ClipOutcome) {
    let total_norm = grad_norm(module, &grads);
    let coefficient = clip_coefficient(total_norm, max_norm);
    let grads = if coefficient < 1.0 {
        scale_grads(module, grads, coefficient)
    } else {
        grads
    };
    (
        grads,
        ClipOutcome {
            total_norm,
            coefficient,
        },
    )
}

/// `min(1, max_norm / (total_norm + 1e-6))`, or 1 for a non-finite norm.
pub(crate) fn clip_coefficient(total_norm: f64, max_norm: f64) -> f64 {
    if total_norm.is_finite() {
        (max_norm / (total_norm + 1e-6)).min(1.0)
    } else {
        1.0
    }
}

fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: GradientsParams,
    factor: f64,
) -> GradientsParams {
    struct Scale<B: AutodiffBackend> {
        grads: GradientsParams,
        out: GradientsParams,
        factor: f64,
        _backend: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.out.register(param.id, grad.mul_scalar(self.factor));
            }
        }
    }
    let mut visitor = Scale::<B> {
        grads,
        out: GradientsParams::new(),
        factor,
        _backend: std::marker::PhantomData,
    };
    module.visit(&mut visitor);
    visitor.out
}

struct SquaredNorms<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    seen: HashSet<ParamId>,
    sums: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorms<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.seen.insert(param.id) {
            return;
        }
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            // One read-only pass on the CPU backend instead of a temporary of squares.
            self.sums.push(virtex_kernels::squared_norm(&grad));
        }
    }
}
