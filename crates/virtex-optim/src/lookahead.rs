//! Lookahead (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back") over any
//! burn optimizer, with VirTex's semantics (`virtex/optim/lookahead.py`).

use std::collections::{HashMap, HashSet};

use burn::config::Config;
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::LearningRate;
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use crate::error::{invalid, Result};

/// Configuration of [`Lookahead`], with VirTex's values as defaults (`OPTIM.LOOKAHEAD.*`).
#[derive(Config, Debug, PartialEq)]
pub struct LookaheadConfig {
    /// Number of inner steps between two synchronisations (`k`, at least 1).
    #[config(default = 5)]
    pub steps: usize,
    /// Weight of the fast weights at a synchronisation (`α` in [0, 1]):
    /// `p ← α·p + (1 − α)·slow`.
    #[config(default = 0.5)]
    pub alpha: f64,
}

impl LookaheadConfig {
    /// Checks `steps ≥ 1` and `0 ≤ alpha ≤ 1` (upstream asserts the same).
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(invalid("lookahead.steps", self.steps, "at least 1"));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(invalid("lookahead.alpha", self.alpha, "a number in [0, 1]"));
        }
        Ok(())
    }

    /// Wraps `inner`, taking the slow weights from `module`'s trainable parameters now.
    ///
    /// Build it right after the model is initialised (or loaded), as upstream does: the slow
    /// weights are a copy of the parameters at this moment.
    pub fn init<B, M, O>(&self, inner: O, module: &M) -> Result<Lookahead<O, B>>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
        O: Optimizer<M, B>,
    {
        self.validate()?;
        Ok(Lookahead {
            inner,
            slow: SlowWeights::capture(self, module),
        })
    }
}

/// A float tensor of any rank, kept flat with its shape.
#[derive(Clone, Debug)]
pub(crate) struct FlatTensor<B: Backend> {
    pub(crate) flat: Tensor<B, 1>,
    pub(crate) shape: Vec<usize>,
}

impl<B: Backend> FlatTensor<B> {
    pub(crate) fn new<const D: usize>(tensor: Tensor<B, D>) -> Self {
        let shape = tensor.dims().to_vec();
        Self {
            flat: tensor.reshape([shape.iter().product::<usize>()]),
            shape,
        }
    }

    fn get<const D: usize>(&self, like: &Tensor<B, D>) -> Tensor<B, D> {
        self.flat
            .clone()
            .to_device(&like.device())
            .reshape(like.dims())
    }
}

/// The slow weights of a Lookahead and its step counter; shared by [`Lookahead`] and
/// [`GroupedOptimizer`](crate::GroupedOptimizer).
#[derive(Clone, Debug)]
pub(crate) struct SlowWeights<B: Backend> {
    pub(crate) steps: usize,
    pub(crate) alpha: f64,
    /// Inner steps since the last synchronisation.
    pub(crate) counter: usize,
    pub(crate) slow: HashMap<ParamId, FlatTensor<B>>,
    /// Fast weights put aside by `load_slow_weights`.
    pub(crate) fast: Option<HashMap<ParamId, FlatTensor<B>>>,
}

impl<B: Backend> SlowWeights<B> {
    pub(crate) fn capture<AB, M>(config: &LookaheadConfig, module: &M) -> Self
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        Self {
            steps: config.steps,
            alpha: config.alpha,
            counter: 0,
            slow: snapshot(module),
            fast: None,
        }
    }

    /// Counts one inner step; synchronises after every `steps`-th. Returns whether it did.
    pub(crate) fn tick<AB, M>(&mut self, module: M) -> (M, bool)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        self.counter += 1;
        if self.counter < self.steps {
            return (module, false);
        }
        self.counter = 0;
        let mut mapper = Synchronise {
            alpha: self.alpha,
            slow: &mut self.slow,
            done: HashSet::new(),
        };
        (module.map(&mut mapper), true)
    }

    /// `module` with every trainable parameter replaced by its slow weight.
    pub(crate) fn apply_slow<AB, M>(&self, module: M) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        module.map(&mut Replace { values: &self.slow })
    }

    pub(crate) fn load_slow<AB, M>(&mut self, module: M) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        // A second call must not overwrite the saved fast weights with the slow ones.
        if self.fast.is_none() {
            self.fast = Some(snapshot(&module));
        }
        self.apply_slow(module)
    }

    pub(crate) fn restore_fast<AB, M>(&mut self, module: M) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        match self.fast.take() {
            Some(fast) => module.map(&mut Replace { values: &fast }),
            None => module,
        }
    }
}

/// Copies (handles of) the inner tensors of every trainable parameter.
fn snapshot<AB, M>(module: &M) -> HashMap<ParamId, FlatTensor<AB::InnerBackend>>
where
    AB: AutodiffBackend,
    M: AutodiffModule<AB>,
{
    struct Snapshot<B: Backend> {
        values: HashMap<ParamId, FlatTensor<B>>,
    }
    impl<AB: AutodiffBackend> ModuleVisitor<AB> for Snapshot<AB::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            let value = param.val();
            if value.is_require_grad() && !self.values.contains_key(&param.id) {
                // burn tensors are immutable values: holding this handle keeps the current
                // weights even when the optimizer later produces new ones.
                self.values.insert(param.id, FlatTensor::new(value.inner()));
            }
        }
    }
    let mut visitor = Snapshot {
        values: HashMap::new(),
    };
    module.visit(&mut visitor);
    visitor.values
}

/// `p ← α·p + (1 − α)·slow; slow ← p`, once per parameter id.
struct Synchronise<'a, B: Backend> {
    alpha: f64,
    slow: &'a mut HashMap<ParamId, FlatTensor<B>>,
    done: HashSet<ParamId>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Synchronise<'_, AB::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        if !tensor.is_require_grad() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let fast = tensor.inner();
        let synced = match self.slow.get(&id) {
            // A tied parameter seen again: it was synchronised at its first occurrence.
            Some(slow) if self.done.contains(&id) => slow.get(&fast),
            // Same operation order as torch's `p.mul_(α).add_(slow, alpha=1 − α)`.
            Some(slow) => fast
                .clone()
                .mul_scalar(self.alpha)
                .add(slow.get(&fast).mul_scalar(1.0 - self.alpha)),
            // A parameter without slow weights (added after construction) starts them now.
            None => fast,
        };
        if self.done.insert(id) {
            self.slow.insert(id, FlatTensor::new(synced.clone()));
        }
        Param::from_mapped_value(id, Tensor::from_inner(synced).require_grad(), mapper)
    }
}

/// Replaces trainable parameters by stored values (those without a stored value are kept).
struct Replace<'a, B: Backend> {
    values: &'a HashMap<ParamId, FlatTensor<B>>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Replace<'_, AB::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.values.get(&id) {
            Some(value) if tensor.is_require_grad() => {
                Tensor::from_inner(value.get(&tensor.inner())).require_grad()
            }
            _ => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// A slow weight in a record: the parameter id, the flattened tensor and its shape.
#[derive(Record, Debug, Clone)]
pub struct SlowWeightRecord<B: Backend> {
    /// The parameter's id ([`ParamId::val`]).
    pub id: u64,
    /// The values, flattened in row-major order.
    pub value: Tensor<B, 1>,
    /// The parameter's shape.
    pub shape: Vec<usize>,
}

impl<AB: AutodiffBackend> SlowWeightRecord<AB> {
    pub(crate) fn from_flat(id: ParamId, value: &FlatTensor<AB::InnerBackend>) -> Self {
        Self {
            id: id.val(),
            value: Tensor::from_inner(value.flat.clone()),
            shape: value.shape.clone(),
        }
    }

    pub(crate) fn into_flat(self) -> (ParamId, FlatTensor<AB::InnerBackend>) {
        let flat = FlatTensor {
            flat: self.value.inner(),
            shape: self.shape,
        };
        (ParamId::from(self.id), flat)
    }
}

/// State of a [`Lookahead`]: the inner optimizer's state, the slow weights and the counter.
///
/// Upstream saves only the inner state and re-initialises the slow weights on resume; this
/// record keeps everything, so a resumed run continues exactly as an uninterrupted one.
#[derive(Record)]
pub struct LookaheadRecord<R: Record<B>, B: Backend> {
    /// The inner optimizer's record.
    pub inner: R,
    /// Slow weights, one per parameter.
    pub slow: Vec<SlowWeightRecord<B>>,
    /// Inner steps since the last synchronisation.
    pub counter: usize,
    /// Synchronisation period `k` the record was made with.
    pub steps: usize,
    /// Interpolation weight `α` the record was made with.
    pub alpha: f64,
}

/// Lookahead around any burn [`Optimizer`]: after every `k`-th inner step,
/// `p ← α·p + (1 − α)·slow` and `slow ← p` for every trainable parameter.
///
/// The inner optimizer's state (momentum buffers, Adam moments) is left untouched by a
/// synchronisation, as in upstream VirTex. `Lookahead` is itself an [`Optimizer`], so it can
/// replace the optimizer of any burn training loop; its record holds the inner state, the slow
/// weights and the counter.
///
/// For VirTex's full recipe (groups, schedule, clipping) use
/// [`GroupedOptimizer`](crate::GroupedOptimizer), which shares this implementation.
///
/// ```
/// use burn::backend::{Autodiff, Flex};
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::{GradientsParams, Optimizer};
/// use burn::tensor::Tensor;
/// use virtex_optim::{LookaheadConfig, TorchSgdConfig};
///
/// type B = Autodiff<Flex>;
/// let device = Default::default();
/// let mut model: Linear<B> = LinearConfig::new(3, 2).init(&device);
/// let sgd = TorchSgdConfig::new().init::<B, Linear<B>>(1e-4).unwrap();
/// let mut optim = LookaheadConfig::new().init(sgd, &model).unwrap();
/// for _ in 0..5 {
///     let loss = model.forward(Tensor::<B, 2>::ones([4, 3], &device)).sum();
///     let grads = GradientsParams::from_grads(loss.backward(), &model);
///     model = optim.step(0.1, model, grads);
/// }
/// assert_eq!(optim.counter(), 0); // the 5th step synchronised
/// ```
#[derive(Clone)]
pub struct Lookahead<O, B: AutodiffBackend> {
    inner: O,
    slow: SlowWeights<B::InnerBackend>,
}

impl<O, B: AutodiffBackend> Lookahead<O, B> {
    /// The wrapped optimizer.
    pub fn inner(&self) -> &O {
        &self.inner
    }

    /// Inner steps since the last synchronisation (0 ≤ counter < k).
    pub fn counter(&self) -> usize {
        self.slow.counter
    }

    /// `module` with its trainable parameters replaced by the slow weights (for evaluation);
    /// the optimizer is unchanged.
    pub fn with_slow_weights<M: AutodiffModule<B>>(&self, module: M) -> M {
        self.slow.apply_slow(module)
    }

    /// Puts the slow weights into `module`, keeping its fast weights aside until
    /// [`restore_fast_weights`](Self::restore_fast_weights) (upstream's `load_slow_weights`).
    pub fn load_slow_weights<M: AutodiffModule<B>>(&mut self, module: M) -> M {
        self.slow.load_slow(module)
    }

    /// Puts back the fast weights saved by [`load_slow_weights`](Self::load_slow_weights);
    /// returns `module` unchanged when none are saved.
    pub fn restore_fast_weights<M: AutodiffModule<B>>(&mut self, module: M) -> M {
        self.slow.restore_fast(module)
    }
}

impl<O, M, B> Optimizer<M, B> for Lookahead<O, B>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    type Record = LookaheadRecord<O::Record, B>;

    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        let module = self.inner.step(lr, module, grads);
        self.slow.tick(module).0
    }

    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        let module = self.inner.step_multi(lr, module, grads);
        self.slow.tick(module).0
    }

    fn to_record(&self) -> Self::Record {
        LookaheadRecord {
            inner: self.inner.to_record(),
            slow: {
                // Sorted so that equal states give byte-identical records.
                let mut slow: Vec<_> = self
                    .slow
                    .slow
                    .iter()
                    .map(|(id, value)| SlowWeightRecord::from_flat(*id, value))
                    .collect();
                slow.sort_by_key(|record| record.id);
                slow
            },
            counter: self.slow.counter,
            steps: self.slow.steps,
            alpha: self.slow.alpha,
        }
    }

    /// Restores the inner state, the slow weights and the counter. The period and α stay those
    /// of this optimizer's configuration; the counter is reduced modulo the period.
    fn load_record(self, record: Self::Record) -> Self {
        let mut slow = self.slow;
        slow.slow = record
            .slow
            .into_iter()
            .map(SlowWeightRecord::into_flat)
            .collect();
        slow.counter = record.counter % slow.steps;
        slow.fast = None;
        Self {
            inner: self.inner.load_record(record.inner),
            slow,
        }
    }
}
