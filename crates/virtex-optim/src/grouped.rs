//! VirTex's whole optimisation step: global clipping → grouped inner optimizers → one Lookahead
//! → schedule step; also burn's `Optimizer`, driven by an external LR multiplier.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;

use burn::config::Config;
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, LearningRate, MultiGradientsParams, Optimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use crate::choice::{inner_optimizer, InnerOptimizer, OptimizerName, TorchAdamWConfig};
use crate::clip::{clip_coefficient, grad_norm};
use crate::error::{invalid, LookaheadError, Result};
use crate::groups::{partition, GroupMatcher, ParamGroup, ParamGroupsConfig, ParamTable};
use crate::lookahead::{FlatTensor, LookaheadConfig, SlowWeights};
use crate::paths::{assign_param_ids, trainable_params, PathStack};
use crate::schedule::{LrSchedule, LrScheduleConfig};
use crate::sgd::TorchSgdConfig;

/// Everything VirTex's optimisation needs, with upstream's values as defaults
/// (`bicaptioning_R_50_L1_H2048`: SGD momentum 0.9, LRs 0.2/0.001, weight decay 1e-4 except the
/// no-decay regex, Lookahead k=5 α=0.5, 10K warmup then cosine to 500K, clip 10).
#[derive(Config, Debug, PartialEq)]
pub struct GroupedOptimizerConfig {
    /// Parameter groups: LRs, weight decay, no-decay regex.
    #[config(default = "ParamGroupsConfig::new()")]
    pub groups: ParamGroupsConfig,
    /// The optimizer inside every group that [`GroupedOptimizerConfig::init`] builds
    /// (upstream's `OPTIM.OPTIMIZER_NAME`; ignored by `init_with`).
    #[config(default = "OptimizerName::Sgd")]
    pub optimizer: OptimizerName,
    /// SGD settings used by [`GroupedOptimizerConfig::init`] when `optimizer` is SGD.
    #[config(default = "TorchSgdConfig::new()")]
    pub sgd: TorchSgdConfig,
    /// AdamW settings used by [`GroupedOptimizerConfig::init`] when `optimizer` is AdamW.
    #[config(default = "TorchAdamWConfig::new()")]
    pub adamw: TorchAdamWConfig,
    /// Lookahead around all groups together; `None` disables it (`OPTIM.LOOKAHEAD.USE`).
    #[config(default = "Some(LookaheadConfig::new())")]
    pub lookahead: Option<LookaheadConfig>,
    /// Learning-rate schedule.
    #[config(default = "LrScheduleConfig::new()")]
    pub schedule: LrScheduleConfig,
    /// Maximum global gradient norm (`OPTIM.CLIP_GRAD_NORM`); `None` disables clipping (the
    /// norm is still computed, for the report and the non-finite check).
    #[config(default = "Some(10.0)")]
    pub clip_grad_norm: Option<f64>,
}

impl GroupedOptimizerConfig {
    /// Builds the optimizer with `self.optimizer` in every group: torch-exact SGD
    /// ([`TorchSgdConfig`], from `self.sgd`) or AdamW ([`TorchAdamWConfig`], from
    /// `self.adamw`), each with its group's weight decay. Slow weights are taken from `module`
    /// now.
    pub fn init<B, M>(&self, module: &M) -> Result<GroupedOptimizer<InnerOptimizer<M, B>, M, B>>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
    {
        self.sgd.validate()?;
        self.adamw.validate()?;
        self.init_with(module, |group| {
            inner_optimizer(self.optimizer, &self.sgd, &self.adamw, group.weight_decay)
        })
    }

    /// Builds the optimizer with any burn optimizer: `factory` makes one per group, given the
    /// group's weight decay (the LR is passed at each step). For AdamW:
    /// `|g| Ok(AdamWConfig::new().with_weight_decay(g.weight_decay as f32).init())`.
    pub fn init_with<B, M, O, F>(
        &self,
        module: &M,
        mut factory: F,
    ) -> Result<GroupedOptimizer<O, M, B>>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
        O: Optimizer<M, B>,
        F: FnMut(&ParamGroup) -> Result<O>,
    {
        let matcher = GroupMatcher::new(&self.groups)?;
        let schedule = self.schedule.init()?;
        if let Some(lookahead) = &self.lookahead {
            lookahead.validate()?;
        }
        if let Some(max_norm) = self.clip_grad_norm {
            if !(max_norm > 0.0 && max_norm.is_finite()) {
                return Err(invalid(
                    "clip_grad_norm",
                    max_norm,
                    "a finite number > 0 (or None to disable clipping)",
                ));
            }
        }
        let table = matcher.table(&trainable_params(module));
        if table.params.is_empty() {
            return Err(LookaheadError::NoParameters);
        }
        let mut slot_of = HashMap::new();
        let mut groups = Vec::new();
        for (slot, (group, members)) in partition(&matcher, &table).into_iter().enumerate() {
            for index in members {
                slot_of.insert(table.params[index].id, slot);
            }
            groups.push(GroupSlot {
                optim: factory(&group)?,
                group,
            });
        }
        Ok(GroupedOptimizer {
            groups,
            slot_of,
            table,
            lookahead: self
                .lookahead
                .as_ref()
                .map(|config| SlowWeights::capture(config, module)),
            schedule,
            clip_grad_norm: self.clip_grad_norm,
            last_report: None,
            _module: PhantomData,
        })
    }
}

/// The learning rate of one LR group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupLr {
    /// The LR group's name (`visual`, `common`, …).
    pub name: String,
    /// Its learning rate: base LR × schedule multiplier.
    pub lr: f64,
}

/// What one [`GroupedOptimizer::step`] did, for logging and for reacting to bad steps.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// 1-based number of this step (= scheduler steps taken after it).
    pub iteration: usize,
    /// Schedule multiplier this step ran at (`multiplier(iteration − 1)`).
    pub lr_multiplier: f64,
    /// Learning rate of each LR group at this step.
    pub learning_rates: Vec<GroupLr>,
    /// Global L2 norm of the gradients before clipping (non-finite when the step was skipped).
    pub grad_norm: f64,
    /// Factor applied to the gradients (1 when not clipped, disabled or skipped).
    pub clip_coefficient: f64,
    /// The gradients held an infinity or NaN: parameters, optimizer state and the Lookahead
    /// counter were left unchanged. The schedule still advanced, as upstream's scheduler is
    /// stepped even when AMP skips the optimizer.
    pub skipped: bool,
    /// This step ended with a Lookahead synchronisation.
    pub lookahead_synced: bool,
}

#[derive(Clone)]
struct GroupSlot<O> {
    group: ParamGroup,
    optim: O,
}

/// VirTex's optimizer: parameter groups from path names, an inner burn optimizer per group,
/// one Lookahead over all of them, an LR schedule and global gradient-norm clipping.
///
/// One call to [`step`](Self::step) is one training iteration's update, in upstream's order:
/// non-finite check → `clip_grad_norm_` → inner optimizers at `base_lr × multiplier` → Lookahead
/// tick (synchronising every `k`-th step) → scheduler step.
///
/// ```
/// use burn::backend::{Autodiff, Flex};
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::GradientsParams;
/// use burn::tensor::{backend::Backend, Tensor};
/// use virtex_optim::{GroupRule, GroupedOptimizerConfig, LrScheduleConfig, ParamGroupsConfig};
///
/// #[derive(Module, Debug)]
/// struct Visual<B: Backend> { cnn: Linear<B> }
/// #[derive(Module, Debug)]
/// struct Net<B: Backend> { visual: Visual<B>, head: Linear<B> }
///
/// type B = Autodiff<Flex>;
/// let device = Default::default();
/// let mut net = Net::<B> {
///     visual: Visual { cnn: LinearConfig::new(4, 4).init(&device) },
///     head: LinearConfig::new(4, 2).init(&device),
/// };
/// // VirTex's recipe, with a short schedule.
/// let config = GroupedOptimizerConfig::new()
///     .with_schedule(LrScheduleConfig::new().with_warmup_steps(2).with_total_steps(20));
/// let mut optim = config.init(&net).unwrap();
/// print!("{}", optim.params()); // every parameter with its group, LR and decay
///
/// for _ in 0..5 {
///     let x = Tensor::<B, 2>::ones([3, 4], &device);
///     let loss = net.head.forward(net.visual.cnn.forward(x)).powf_scalar(2.0).mean();
///     let grads = GradientsParams::from_grads(loss.backward(), &net);
///     let (updated, report) = optim.step(net, grads);
///     net = updated;
///     assert!(!report.skipped);
/// }
/// assert_eq!(optim.params().params[0].path, "visual.cnn.weight");
/// assert_eq!(optim.learning_rates()[0].name, "visual");
/// ```
///
/// # As burn's `Optimizer`
///
/// `GroupedOptimizer` also implements [`Optimizer`], for burn-train's `Learner` and other
/// generic burn loops. There, `lr` is the **schedule multiplier**: every group steps at
/// `group base LR × lr`, and the optimizer's own schedule is not applied (it only counts the
/// iteration), so the schedule cannot be applied twice. Pairing it with our
/// [`LrSchedule`] as burn's `LrScheduler` (e.g. `optim.schedule().clone()`) reproduces
/// [`step`](Self::step) bit for bit; with burn's schedulers, make them yield a multiplier
/// (`ConstantLr::new(1.0)` runs every group at its base LR). Everything else (clipping,
/// non-finite skip, Lookahead) is the same; the [`StepReport`] is kept in
/// [`last_report`](Self::last_report).
///
/// The inherent methods take precedence in method-call syntax, so outside generic code call the
/// trait's as `Optimizer::step(&mut optim, lr, module, grads)`.
pub struct GroupedOptimizer<O, M, B: AutodiffBackend> {
    groups: Vec<GroupSlot<O>>,
    slot_of: HashMap<ParamId, usize>,
    table: ParamTable,
    lookahead: Option<SlowWeights<B::InnerBackend>>,
    /// The schedule, positioned at the number of completed iterations (skipped ones included).
    schedule: LrSchedule,
    clip_grad_norm: Option<f64>,
    last_report: Option<StepReport>,
    _module: PhantomData<fn(M) -> M>,
}

// By hand: a derive would demand `M: Clone` and `B: Clone`, which the fields do not need.
impl<O: Clone, M, B: AutodiffBackend> Clone for GroupedOptimizer<O, M, B> {
    fn clone(&self) -> Self {
        Self {
            groups: self.groups.clone(),
            slot_of: self.slot_of.clone(),
            table: self.table.clone(),
            lookahead: self.lookahead.clone(),
            schedule: self.schedule.clone(),
            clip_grad_norm: self.clip_grad_norm,
            last_report: self.last_report.clone(),
            _module: PhantomData,
        }
    }
}

impl<O, M, B> GroupedOptimizer<O, M, B>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    /// One optimisation step with the gradients of one iteration; returns the updated module.
    ///
    /// Gradients of parameters without one in `grads` are left alone (as torch does for
    /// `grad is None`); Lookahead still interpolates them at a synchronisation.
    ///
    /// # Panics
    /// If `grads` holds a gradient for a trainable parameter of `module` that this optimizer
    /// does not know (its [`ParamId`] was not in the module the optimizer was built from):
    /// updating the others silently would be worse. After re-creating the module, use
    /// [`load_record`](Self::load_record), which re-attaches the ids.
    pub fn step(&mut self, module: M, grads: GradientsParams) -> (M, StepReport) {
        let lr_multiplier = self.schedule.multiplier(self.schedule.steps_taken());
        self.step_with_multiplier(lr_multiplier, module, grads)
    }

    /// The step of both [`step`](Self::step) and the [`Optimizer`] implementation, at a given
    /// schedule multiplier; counts the iteration either way.
    fn step_with_multiplier(
        &mut self,
        lr_multiplier: f64,
        module: M,
        grads: GradientsParams,
    ) -> (M, StepReport) {
        let iteration = self.schedule.steps_taken() + 1;
        self.schedule.set_steps_taken(iteration);
        let (module, report) = self.update(iteration, lr_multiplier, module, grads);
        self.last_report = Some(report.clone());
        (module, report)
    }

    /// Clip check → split by group → inner steps → Lookahead tick, for iteration `iteration`.
    fn update(
        &mut self,
        iteration: usize,
        lr_multiplier: f64,
        module: M,
        grads: GradientsParams,
    ) -> (M, StepReport) {
        let learning_rates = self.rates(lr_multiplier);
        let total_norm = grad_norm(&module, &grads);
        let mut report = StepReport {
            iteration,
            lr_multiplier,
            learning_rates,
            grad_norm: total_norm,
            clip_coefficient: 1.0,
            skipped: false,
            lookahead_synced: false,
        };
        if !total_norm.is_finite() {
            report.skipped = true;
            return (module, report);
        }
        if let Some(max_norm) = self.clip_grad_norm {
            report.clip_coefficient = clip_coefficient(total_norm, max_norm);
        }

        let mut split = Split::<B> {
            grads,
            slot_of: &self.slot_of,
            factor: report.clip_coefficient,
            out: (0..self.groups.len())
                .map(|_| GradientsParams::new())
                .collect(),
            path: PathStack::default(),
            seen: HashSet::new(),
            unknown: Vec::new(),
            _backend: PhantomData,
        };
        module.visit(&mut split);
        if !split.unknown.is_empty() {
            panic!(
                "GroupedOptimizer::step: the module has trainable parameters this optimizer was \
                 not built for: {} (re-created modules need `load_record`, which re-attaches the \
                 parameter ids)",
                split.unknown.join(", ")
            );
        }

        let mut module = module;
        for (slot, grads) in self.groups.iter_mut().zip(split.out) {
            if !grads.is_empty() {
                module = slot
                    .optim
                    .step(slot.group.lr * lr_multiplier, module, grads);
            }
        }
        if let Some(lookahead) = &mut self.lookahead {
            let (synced_module, synced) = lookahead.tick(module);
            module = synced_module;
            report.lookahead_synced = synced;
        }
        (module, report)
    }

    /// The state to save with a checkpoint: inner optimizer states, slow weights, Lookahead
    /// counter and schedule position, keyed by parameter path.
    pub fn to_record(&self) -> GroupedOptimizerRecord<O::Record, B> {
        let params = self
            .table
            .params
            .iter()
            .map(|info| ParamStateRecord {
                path: info.path.clone(),
                id: info.id.val(),
                shape: info.shape.clone(),
                slow: self
                    .lookahead
                    .as_ref()
                    .and_then(|l| l.slow.get(&info.id))
                    .map(|flat| Tensor::from_inner(flat.flat.clone())),
            })
            .collect();
        GroupedOptimizerRecord {
            groups: self.groups.iter().map(|g| group_label(&g.group)).collect(),
            inner: self.groups.iter().map(|g| g.optim.to_record()).collect(),
            params,
            lookahead_counter: self.lookahead.as_ref().map_or(0, |l| l.counter),
            schedule_step: self.schedule.steps_taken(),
        }
    }

    /// Restores a state saved by [`to_record`](Self::to_record) and returns `module` with the
    /// parameter ids of the record.
    ///
    /// Parameters are matched by path, so `module` may be a freshly built model whose weights
    /// were loaded from any file; its parameter ids are set to the saved ones so the inner
    /// optimizers' states (keyed by id) apply. Build `self` from the same configuration (LRs may
    /// differ; groups, decay split and Lookahead must not).
    ///
    /// # Errors
    /// [`LookaheadError::RecordMismatch`] naming the path or group that differs.
    pub fn load_record(
        self,
        record: GroupedOptimizerRecord<O::Record, B>,
        module: M,
    ) -> Result<(Self, M)> {
        let (optim, ids) = self.restore(record)?;
        Ok((optim, assign_param_ids(module, &ids)))
    }

    /// Restores a state saved by [`to_record`](Self::to_record) for a module that already
    /// carries the saved parameter ids, as a module restored from its burn record does (burn
    /// records keep the ids). This is what burn's [`Optimizer::load_record`] does, with the
    /// error returned instead of a panic.
    ///
    /// Parameters are still matched by path and shape; the optimizer adopts the saved ids.
    /// For a module rebuilt with fresh ids use [`load_record`](Self::load_record).
    ///
    /// # Errors
    /// [`LookaheadError::RecordMismatch`] naming the path or group that differs.
    pub fn try_load_record(self, record: GroupedOptimizerRecord<O::Record, B>) -> Result<Self> {
        self.restore(record).map(|(optim, _)| optim)
    }

    /// Checks `record` against this optimizer, loads it, and re-keys the optimizer to the saved
    /// parameter ids, which it returns by path.
    fn restore(
        mut self,
        record: GroupedOptimizerRecord<O::Record, B>,
    ) -> Result<(Self, HashMap<String, ParamId>)> {
        let labels: Vec<String> = self.groups.iter().map(|g| group_label(&g.group)).collect();
        if labels != record.groups {
            return Err(LookaheadError::RecordMismatch {
                subject: "parameter groups".into(),
                problem: format!(
                    "the record has {:?}, this configuration and module give {:?}",
                    record.groups, labels
                ),
            });
        }
        if record.inner.len() != self.groups.len() {
            return Err(LookaheadError::RecordMismatch {
                subject: "inner optimizer states".into(),
                problem: format!(
                    "{} states for {} groups",
                    record.inner.len(),
                    self.groups.len()
                ),
            });
        }
        let current: HashMap<&str, &crate::groups::ParamInfo> = self
            .table
            .params
            .iter()
            .map(|p| (p.path.as_str(), p))
            .collect();
        let saved: HashSet<&str> = record.params.iter().map(|p| p.path.as_str()).collect();
        if let Some(missing) = self
            .table
            .params
            .iter()
            .find(|p| !saved.contains(p.path.as_str()))
        {
            return Err(LookaheadError::RecordMismatch {
                subject: missing.path.clone(),
                problem: "trainable parameter of the module is not in the record".into(),
            });
        }
        let mut ids = HashMap::new();
        for param in &record.params {
            let Some(info) = current.get(param.path.as_str()) else {
                return Err(LookaheadError::RecordMismatch {
                    subject: param.path.clone(),
                    problem: "saved parameter is not a trainable parameter of the module".into(),
                });
            };
            if info.shape != param.shape {
                return Err(LookaheadError::RecordMismatch {
                    subject: param.path.clone(),
                    problem: format!(
                        "saved with shape {:?}, the module has {:?}",
                        param.shape, info.shape
                    ),
                });
            }
            ids.insert(param.path.clone(), ParamId::from(param.id));
        }

        if let Some(lookahead) = &mut self.lookahead {
            let mut slow = HashMap::new();
            for param in &record.params {
                let Some(value) = &param.slow else {
                    return Err(LookaheadError::RecordMismatch {
                        subject: param.path.clone(),
                        problem: "the record has no slow weight (saved without Lookahead), \
                                  this optimizer uses Lookahead"
                            .into(),
                    });
                };
                if value.dims()[0] != param.shape.iter().product::<usize>() {
                    return Err(LookaheadError::RecordMismatch {
                        subject: param.path.clone(),
                        problem: format!(
                            "slow weight has {} values for shape {:?}",
                            value.dims()[0],
                            param.shape
                        ),
                    });
                }
                slow.insert(
                    ids[&param.path],
                    FlatTensor {
                        flat: value.clone().inner(),
                        shape: param.shape.clone(),
                    },
                );
            }
            lookahead.slow = slow;
            lookahead.counter = record.lookahead_counter % lookahead.steps;
            lookahead.fast = None;
        }

        let mut slot_of = HashMap::new();
        for info in &mut self.table.params {
            let new_id = ids[&info.path];
            slot_of.insert(new_id, self.slot_of[&info.id]);
            info.id = new_id;
        }
        self.slot_of = slot_of;
        let groups = std::mem::take(&mut self.groups);
        self.groups = groups
            .into_iter()
            .zip(record.inner)
            .map(|(slot, inner)| GroupSlot {
                group: slot.group,
                optim: slot.optim.load_record(inner),
            })
            .collect();
        self.schedule.set_steps_taken(record.schedule_step);
        self.last_report = None;
        Ok((self, ids))
    }
}

impl<O, M, B> Optimizer<M, B> for GroupedOptimizer<O, M, B>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    type Record = GroupedOptimizerRecord<O::Record, B>;

    /// One iteration's update with `lr` as the **schedule multiplier**: each group runs at its
    /// base LR × `lr`, after the same clipping and non-finite check as
    /// [`GroupedOptimizer::step`], followed by the same Lookahead tick. The own schedule is
    /// not applied; its position still counts the iteration. The report is kept in
    /// [`last_report`](GroupedOptimizer::last_report).
    ///
    /// # Panics
    /// If `lr` is not finite (a scheduler bug: the parameters would all become NaN), and in
    /// the cases of [`GroupedOptimizer::step`].
    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        assert!(
            lr.is_finite(),
            "GroupedOptimizer: the LR multiplier given to `Optimizer::step` is {lr}; expected a \
             finite number"
        );
        self.step_with_multiplier(lr, module, grads).0
    }

    /// As [`step`](Optimizer::step), with gradients from several devices: each parameter's
    /// gradients are summed and moved to the device of the parameter, so the global norm and
    /// the update are those of the summed gradient.
    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        let mut gather = Gather {
            multi: grads,
            out: GradientsParams::new(),
            seen: HashSet::new(),
        };
        module.visit(&mut gather);
        Optimizer::step(self, lr, module, gather.out)
    }

    fn to_record(&self) -> Self::Record {
        GroupedOptimizer::to_record(self)
    }

    /// Loads a record for a module restored from its burn record (which keeps parameter ids):
    /// [`try_load_record`](GroupedOptimizer::try_load_record).
    ///
    /// # Panics
    /// If the record does not fit this optimizer's parameters and groups (burn's signature has
    /// no error); the message names the path or group. Call `try_load_record` to get the
    /// error instead.
    fn load_record(self, record: Self::Record) -> Self {
        match self.try_load_record(record) {
            Ok(optim) => optim,
            Err(error) => panic!("GroupedOptimizer: cannot load the optimizer record: {error}"),
        }
    }
}

impl<O, M, B: AutodiffBackend> GroupedOptimizer<O, M, B> {
    /// Every trainable parameter with its path, group, base LR, weight decay and size.
    pub fn params(&self) -> &ParamTable {
        &self.table
    }

    /// The optimisation groups (LR group × decay), in the order of the record.
    pub fn groups(&self) -> Vec<ParamGroup> {
        self.groups.iter().map(|g| g.group.clone()).collect()
    }

    /// Scheduler steps taken so far (= completed iterations, skipped ones included, by either
    /// [`step`](Self::step) or burn's [`Optimizer::step`]).
    pub fn schedule_step(&self) -> usize {
        self.schedule.steps_taken()
    }

    /// The schedule, positioned at [`schedule_step`](Self::schedule_step): a clone is the burn
    /// `LrScheduler` that drives this optimizer's [`Optimizer`] implementation exactly as
    /// [`step`](Self::step) would.
    pub fn schedule(&self) -> &LrSchedule {
        &self.schedule
    }

    /// Learning rates the next [`step`](Self::step) will use, per LR group (under burn's
    /// [`Optimizer::step`] they depend on the `lr` given; see
    /// [`last_report`](Self::last_report)).
    pub fn learning_rates(&self) -> Vec<GroupLr> {
        self.rates(self.schedule.multiplier(self.schedule.steps_taken()))
    }

    /// The report of the latest step, by either [`step`](Self::step) or burn's
    /// [`Optimizer::step`] (which returns only the module); `None` before the first step and
    /// after loading a record.
    pub fn last_report(&self) -> Option<&StepReport> {
        self.last_report.as_ref()
    }

    /// Inner steps since the last Lookahead synchronisation (`None` without Lookahead).
    pub fn lookahead_counter(&self) -> Option<usize> {
        self.lookahead.as_ref().map(|l| l.counter)
    }

    fn rates(&self, multiplier: f64) -> Vec<GroupLr> {
        let mut out: Vec<GroupLr> = Vec::new();
        for slot in &self.groups {
            if !out.iter().any(|r| r.name == slot.group.name) {
                out.push(GroupLr {
                    name: slot.group.name.clone(),
                    lr: slot.group.lr * multiplier,
                });
            }
        }
        out
    }
}

impl<O, M: AutodiffModule<B>, B: AutodiffBackend> GroupedOptimizer<O, M, B> {
    /// `module` with the Lookahead slow weights in place of its parameters (for evaluation);
    /// unchanged without Lookahead.
    pub fn with_slow_weights(&self, module: M) -> M {
        match &self.lookahead {
            Some(lookahead) => lookahead.apply_slow(module),
            None => module,
        }
    }

    /// Upstream's `load_slow_weights`: puts the slow weights into `module` and keeps the fast
    /// ones aside for [`restore_fast_weights`](Self::restore_fast_weights).
    pub fn load_slow_weights(&mut self, module: M) -> M {
        match &mut self.lookahead {
            Some(lookahead) => lookahead.load_slow(module),
            None => module,
        }
    }

    /// Upstream's `restore_fast_weights`: puts back the weights saved by
    /// [`load_slow_weights`](Self::load_slow_weights) (unchanged `module` when none are saved).
    pub fn restore_fast_weights(&mut self, module: M) -> M {
        match &mut self.lookahead {
            Some(lookahead) => lookahead.restore_fast(module),
            None => module,
        }
    }
}

fn group_label(group: &ParamGroup) -> String {
    if group.weight_decay == 0.0 {
        format!("{} (no weight decay)", group.name)
    } else {
        format!("{} (weight decay)", group.name)
    }
}

/// Saved state of one parameter.
#[derive(Record, Debug, Clone)]
pub struct ParamStateRecord<B: Backend> {
    /// Dotted module path (what parameters are matched by on load).
    pub path: String,
    /// Parameter id when saved (the key of the inner optimizers' states).
    pub id: u64,
    /// Shape.
    pub shape: Vec<usize>,
    /// Lookahead slow weight, flattened; `None` without Lookahead.
    pub slow: Option<Tensor<B, 1>>,
}

/// Saved state of a [`GroupedOptimizer`]: save it with any burn recorder, e.g.
/// `BinFileRecorder::<FullPrecisionSettings>`.
#[derive(Record)]
pub struct GroupedOptimizerRecord<R: Record<B>, B: Backend> {
    /// Labels of the optimisation groups (`visual (weight decay)`, …), checked on load.
    pub groups: Vec<String>,
    /// Inner optimizer state of each group, in the same order.
    pub inner: Vec<R>,
    /// Every trainable parameter: path, id, shape, slow weight.
    pub params: Vec<ParamStateRecord<B>>,
    /// Inner steps since the last Lookahead synchronisation.
    pub lookahead_counter: usize,
    /// Scheduler steps taken.
    pub schedule_step: usize,
}

/// Sums each trainable parameter's gradients over the devices of a [`MultiGradientsParams`] and
/// moves the sum to the parameter's device.
struct Gather {
    multi: MultiGradientsParams,
    out: GradientsParams,
    seen: HashSet<ParamId>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.seen.insert(param.id) {
            return;
        }
        if let Some((grad, _)) = self.multi.remove::<B::InnerBackend, D>(param.id) {
            // One device for all gradients keeps the global norm a single reduction.
            let device = param.val().inner().device();
            self.out.register(param.id, grad.to_device(&device));
        }
    }
}

/// Moves each gradient into its group's container, scaled by the clip coefficient.
struct Split<'a, B: AutodiffBackend> {
    grads: GradientsParams,
    slot_of: &'a HashMap<ParamId, usize>,
    factor: f64,
    out: Vec<GradientsParams>,
    path: PathStack,
    seen: HashSet<ParamId>,
    unknown: Vec<String>,
    _backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.seen.insert(param.id) {
            return;
        }
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        match self.slot_of.get(&param.id) {
            Some(&slot) => {
                // torch multiplies by the clamped coefficient even when it is 1; x·1 = x.
                let grad = if self.factor < 1.0 {
                    grad.mul_scalar(self.factor)
                } else {
                    grad
                };
                self.out[slot].register(param.id, grad);
            }
            None => self.unknown.push(self.path.current()),
        }
    }
}
