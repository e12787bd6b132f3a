//! One optimisation step, in upstream's order: for each micro-batch forward (train mode) →
//! loss → backward, gradients summed; then global clip → grouped SGD → Lookahead → schedule.

use burn::collective::{PeerId, ReduceOperation};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use virtex_data::Batch;
use virtex_optim::{GroupedOptimizer, InnerOptimizer, StepReport};

use crate::error::TrainError;
use crate::pretext::{Objective, PretextModel};

/// The optimizer the trainer uses: [`crate::optimizer_config`]'s groups, torch-exact SGD or
/// AdamW (`optim.optimizer_name`), Lookahead, schedule and global clipping.
pub type Optim<M, B> = GroupedOptimizer<InnerOptimizer<M, B>, M, B>;

/// Loss values of a step or of a validation pass: the total and the model's named components
/// (for captioning `captioning_forward` and, with a backward head, `captioning_backward`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossValues {
    /// What is optimised.
    pub loss: f64,
    /// Named parts of the loss, in the model's order.
    pub components: Vec<(String, f64)>,
}

impl LossValues {
    /// The component called `name`.
    pub fn component(&self, name: &str) -> Option<f64> {
        self.components
            .iter()
            .find(|(component, _)| component == name)
            .map(|(_, value)| *value)
    }

    /// The components for a log line: `name value, name value` (4 decimals).
    pub fn components_line(&self) -> String {
        self.components
            .iter()
            .map(|(name, value)| format!("{name} {value:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Zero loss and zero `names` components, ready to accumulate into.
    fn zeros(names: &[&'static str]) -> Self {
        Self {
            loss: 0.0,
            components: names.iter().map(|name| (name.to_string(), 0.0)).collect(),
        }
    }

    /// Every value times `scale`.
    pub(crate) fn scaled(&self, scale: f64) -> Self {
        Self {
            loss: self.loss * scale,
            components: self
                .components
                .iter()
                .map(|(name, value)| (name.clone(), value * scale))
                .collect(),
        }
    }

    /// Adds `scale × other`, value by value (the same model, so the same components).
    pub(crate) fn add_scaled(&mut self, other: &Self, scale: f64) {
        self.loss += other.loss * scale;
        for ((_, total), (_, value)) in self.components.iter_mut().zip(&other.components) {
            *total += value * scale;
        }
    }

    /// Adds `scale ×` the values read from `[loss, component…]`.
    fn add_read(&mut self, values: TensorData, scale: f64) {
        let mut values = values.iter::<f64>();
        self.loss += values.next().unwrap_or(f64::NAN) * scale;
        for ((_, total), value) in self.components.iter_mut().zip(values) {
            *total += value * scale;
        }
    }
}

/// `[loss, component…]` of an objective as one tensor, so that reading them back costs one
/// device synchronisation.
pub(crate) fn stacked<B: Backend>(objective: &Objective<B>) -> Tensor<B, 1> {
    let mut parts = vec![objective.loss.clone()];
    parts.extend(objective.components.iter().map(|(_, value)| value.clone()));
    Tensor::cat(parts, 0)
}

/// The names of an objective's components.
pub(crate) fn component_names<B: Backend>(objective: &Objective<B>) -> Vec<&'static str> {
    objective.components.iter().map(|(name, _)| *name).collect()
}

/// Reads back [`stacked`] losses of components `names` and sums them, each scaled by `scale`.
pub(crate) fn read_losses<B: Backend>(
    pending: Vec<Tensor<B, 1>>,
    names: &[&'static str],
    scale: f64,
) -> LossValues {
    let mut losses = LossValues::zeros(names);
    for values in pending {
        losses.add_read(values.into_data(), scale);
    }
    losses
}

/// What one [`train_step`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// The losses of the step's batch, computed before the update (the mean over the
    /// micro-batches when the step accumulates several).
    pub losses: LossValues,
    /// The optimizer's report: LRs, gradient norm and clip factor, skipped, Lookahead sync.
    pub report: StepReport,
    /// Images the step trained on.
    pub images: usize,
}

/// One training iteration, in upstream's order: for each micro-batch, forward in train mode →
/// loss → backward, the gradients summed (each loss scaled by 1 / micro-batches); then
/// [`GroupedOptimizer::step`]: non-finite check → global gradient-norm clip → grouped SGD at
/// `base LR × schedule` → Lookahead → schedule step.
///
/// `batches` holds the iteration's micro-batches (one without gradient accumulation); they are
/// consumed one at a time, so only one needs to be on the device at once. Seeding the backend
/// RNG (dropout) is the caller's business. A non-finite loss gives non-finite gradients, which
/// the optimizer detects: the step is skipped (`report.skipped`) while the schedule advances,
/// as upstream's `GradScaler` does.
pub fn train_step<B, M, I>(
    model: M,
    optimizer: &mut Optim<M, B>,
    batches: I,
) -> Result<(M, StepResult), TrainError>
where
    B: AutodiffBackend,
    M: PretextModel<B> + AutodiffModule<B>,
    I: IntoIterator<Item = Batch<B>>,
    I::IntoIter: ExactSizeIterator,
{
    step_with(model, optimizer, batches, Ok)
}

/// One training iteration of one replica in data-parallel training: [`train_step`] with the
/// accumulated gradients averaged over every replica between the backward passes and the
/// optimizer step, by burn-collective's all-reduce (`GradientsParams::all_reduce`,
/// [`ReduceOperation::Mean`]). Every rank of the collective must call this once per iteration
/// (it blocks until all have contributed); as all ranks then step with identical gradients,
/// replicas that start identical stay identical (weights, momentum, Lookahead, skipped steps).
///
/// `peer` is this rank's id in the collective, registered beforehand with
/// [`burn::collective::register`] on `B::InnerBackend` (see [`crate::data_parallel`]). The
/// returned losses are this rank's own (the mean over its micro-batches).
pub fn data_parallel_step<B, M, I>(
    model: M,
    optimizer: &mut Optim<M, B>,
    batches: I,
    peer: PeerId,
) -> Result<(M, StepResult), TrainError>
where
    B: AutodiffBackend,
    M: PretextModel<B> + AutodiffModule<B>,
    I: IntoIterator<Item = Batch<B>>,
    I::IntoIter: ExactSizeIterator,
{
    step_with(model, optimizer, batches, |grads| {
        grads
            .all_reduce::<B::InnerBackend>(peer, ReduceOperation::Mean)
            .map_err(|err| {
                TrainError::DataParallel(format!(
                    "all-reduce of the gradients on rank {peer}: {err:?}"
                ))
            })
    })
}

/// [`train_step`] with `reduce` applied to the accumulated gradients before the optimizer step.
fn step_with<B, M, I, F>(
    model: M,
    optimizer: &mut Optim<M, B>,
    batches: I,
    reduce: F,
) -> Result<(M, StepResult), TrainError>
where
    B: AutodiffBackend,
    M: PretextModel<B> + AutodiffModule<B>,
    I: IntoIterator<Item = Batch<B>>,
    I::IntoIter: ExactSizeIterator,
    F: FnOnce(GradientsParams) -> Result<GradientsParams, TrainError>,
{
    let batches = batches.into_iter();
    let micro_batches = batches.len();
    if micro_batches == 0 {
        return Err(TrainError::Config(
            "a training step needs at least one batch".into(),
        ));
    }
    let scale = 1.0 / micro_batches as f64;
    let mut accumulator = GradientsAccumulator::<M>::new();
    // The losses of each micro-batch, read only after the optimizer step: reading a value
    // waits for the device, and reads here would stall a GPU before the backward pass is even
    // queued.
    let mut pending_losses = Vec::with_capacity(micro_batches);
    let mut names = Vec::new();
    let mut images = 0;
    for batch in batches {
        images += batch.images.dims()[0];
        let objective = model.objective(&batch);
        pending_losses.push(stacked(&objective).inner());
        let loss = if micro_batches > 1 {
            objective.loss.clone().mul_scalar(scale)
        } else {
            objective.loss.clone()
        };
        names = component_names(&objective);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        accumulator.accumulate(&model, grads);
    }
    let grads = reduce(accumulator.grads())?;
    let (model, report) = optimizer.step(model, grads);
    let losses = read_losses(pending_losses, &names, scale);
    Ok((
        model,
        StepResult {
            losses,
            report,
            images,
        },
    ))
}
