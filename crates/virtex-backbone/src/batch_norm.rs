//! `torch.nn.BatchNorm2d`, reproduced exactly.
//!
//! burn-nn's `BatchNorm` updates `running_var` with the *biased* batch variance; PyTorch uses the
//! unbiased one (`n / (n − 1)` times larger). Over 500K iterations that changes every running
//! statistic, so the backbone carries its own module. Parameter names follow PyTorch
//! (`weight`, `bias`, `running_mean`, `running_var`) so checkpoints map one to one.

use burn::module::{Param, RunningState};
use burn::prelude::*;
use virtex_kernels::{batch_norm2d_eval, batch_norm2d_train, BatchNormTrain};

/// Configuration of a [`BatchNorm2d`], with PyTorch's defaults.
#[derive(Config, Debug)]
pub struct BatchNorm2dConfig {
    /// Number of channels `C`.
    pub num_features: usize,
    /// Added to the variance before the square root.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Weight of the newest batch in the running statistics.
    #[config(default = 0.1)]
    pub momentum: f64,
}

impl BatchNorm2dConfig {
    /// Creates the module: weight 1, bias 0, running mean 0, running variance 1 (as torch).
    pub fn init<B: Backend>(&self, device: &B::Device) -> BatchNorm2d<B> {
        let channels = self.num_features;
        BatchNorm2d {
            weight: Param::from_tensor(Tensor::ones([channels], device)),
            bias: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum: self.momentum,
            epsilon: self.epsilon,
            frozen: false,
        }
    }
}

/// Batch normalisation over `[B, C, H, W]` with PyTorch's train/eval semantics.
///
/// Mode follows burn's convention: on an autodiff backend (training) the batch statistics are
/// used and the running statistics updated; on a plain backend (`model.valid()`, inference) the
/// running statistics are used. A [`frozen`](BatchNorm2d::frozen) BatchNorm uses the running
/// statistics on every backend (torch's `eval()` kept for the whole run).
#[derive(Module, Debug)]
pub struct BatchNorm2d<B: Backend> {
    /// Scale γ, `[C]` (torch `weight`).
    pub weight: Param<Tensor<B, 1>>,
    /// Shift β, `[C]` (torch `bias`).
    pub bias: Param<Tensor<B, 1>>,
    /// Running mean, `[C]`.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (unbiased) variance, `[C]`.
    pub running_var: RunningState<Tensor<B, 1>>,
    /// Momentum of the running statistics.
    pub momentum: f64,
    /// Epsilon added to the variance.
    pub epsilon: f64,
    /// Evaluation mode on every backend: the running statistics normalise and are never
    /// updated (a frozen backbone, upstream's `MODEL.VISUAL.FROZEN`). Not saved in records.
    pub frozen: bool,
}

impl<B: Backend> BatchNorm2d<B> {
    /// Normalises `input`.
    ///
    /// # Shapes
    /// - `input`: `[B, C, H, W]`
    /// - returns: `[B, C, H, W]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        if B::ad_enabled(&input.device()) && !self.frozen {
            self.forward_train(input)
        } else {
            self.forward_eval(input)
        }
    }

    /// Makes the latest running-statistic update visible to readers such as checkpoint writers.
    ///
    /// burn's `RunningState` keeps an update in a per-thread slot until it is synchronised;
    /// `model.valid()` does this, a direct save of the training module would not.
    pub fn sync_running_statistics(&self) {
        let _ = self.running_mean.value_sync();
        let _ = self.running_var.value_sync();
    }

    /// `y = x · (γ / √(var + ε)) + (β − mean · γ / √(var + ε))` with the running statistics:
    /// the per-channel arithmetic on `[C]` vectors, then one pass over the input on the CPU
    /// backend ([`virtex_kernels::batch_norm2d_eval`]).
    fn forward_eval(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        // As in `forward_train`: the running statistics may live on another device than the
        // input (a module moved or forked after they were last written).
        let device = input.device();
        batch_norm2d_eval(
            input,
            self.running_mean.value().to_device(&device),
            self.running_var.value().to_device(&device),
            self.weight.val(),
            self.bias.val(),
            self.epsilon,
        )
    }

    /// Batch statistics (one fused operation on the CPU backend, see
    /// [`virtex_kernels::batch_norm2d_train`]) and torch's running-statistic update.
    fn forward_train(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, _, height, width] = input.dims();
        let count = (batch * height * width) as f64;
        let BatchNormTrain {
            output,
            mean,
            variance,
        } = batch_norm2d_train(input, self.weight.val(), self.bias.val(), self.epsilon);

        // torch stores the unbiased variance; a batch of one value per channel has none.
        let unbiased = if count > 1.0 {
            variance.mul_scalar(count / (count - 1.0))
        } else {
            variance
        };
        let device = output.device();
        let momentum = self.momentum;
        let running_mean = self
            .running_mean
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - momentum)
            + mean.mul_scalar(momentum);
        let running_var = self
            .running_var
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - momentum)
            + unbiased.mul_scalar(momentum);
        self.running_mean.update(running_mean.detach());
        self.running_var.update(running_var.detach());
        output
    }
}
