//! Learning-rate schedules of VirTex (`virtex/optim/lr_scheduler.py`): linear warmup, then one
//! of four decays. One multiplier applies to every parameter group's base LR.
//!
//! [`LrSchedule`] is also burn's [`LrScheduler`], yielding that multiplier once per iteration,
//! so burn-train's `Learner` or any burn loop can drive (and checkpoint) it.

use std::f64::consts::PI;

use burn::config::Config;
use burn::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;

use crate::error::{invalid, Result};

/// What follows the linear warmup (upstream `OPTIM.LR_DECAY_NAME`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum LrDecay {
    /// `cos²((π/2)·(s − W)/(T − W))`, i.e. `0.5·(1 + cos(π·(s − W)/(T − W)))` (upstream
    /// `cosine`, VirTex's choice).
    Cosine,
    /// `(T − s)/(T − W)` (upstream `linear`).
    Linear,
    /// `γ^n` with `n` the number of milestones ≤ `s` (upstream `multistep`).
    Multistep,
    /// 1 (upstream `none`).
    Constant,
}

impl LrDecay {
    /// Parses upstream's names: `cosine`, `linear`, `multistep`, `none`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "cosine" => Ok(Self::Cosine),
            "linear" => Ok(Self::Linear),
            "multistep" => Ok(Self::Multistep),
            "none" => Ok(Self::Constant),
            other => Err(invalid(
                "schedule.decay",
                format!("`{other}`"),
                "one of cosine, linear, multistep, none",
            )),
        }
    }

    /// Upstream's name of the decay.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Linear => "linear",
            Self::Multistep => "multistep",
            Self::Constant => "none",
        }
    }
}

/// Learning-rate schedule settings, with VirTex's values as defaults.
#[derive(Config, Debug, PartialEq)]
pub struct LrScheduleConfig {
    /// Decay after the warmup (`OPTIM.LR_DECAY_NAME`).
    #[config(default = "LrDecay::Cosine")]
    pub decay: LrDecay,
    /// Linear warmup length `W` in steps (`OPTIM.WARMUP_STEPS`).
    #[config(default = 10_000)]
    pub warmup_steps: usize,
    /// Total number of steps `T` (`OPTIM.NUM_ITERATIONS`).
    #[config(default = 500_000)]
    pub total_steps: usize,
    /// Steps at which `multistep` multiplies by γ, increasing (`OPTIM.LR_STEPS`).
    #[config(default = "Vec::new()")]
    pub milestones: Vec<usize>,
    /// Factor γ of `multistep` (`OPTIM.LR_GAMMA`).
    #[config(default = 0.1)]
    pub gamma: f64,
}

impl LrScheduleConfig {
    /// Validates the settings (as upstream's constructors assert: `W < T`, milestones sorted).
    pub fn init(&self) -> Result<LrSchedule> {
        if self.warmup_steps >= self.total_steps {
            return Err(invalid(
                "schedule.warmup_steps",
                self.warmup_steps,
                format!(
                    "fewer warmup steps than schedule.total_steps ({})",
                    self.total_steps
                ),
            ));
        }
        if self.milestones.windows(2).any(|pair| pair[0] > pair[1]) {
            return Err(invalid(
                "schedule.milestones",
                format!("{:?}", self.milestones),
                "increasing step numbers",
            ));
        }
        if !self.gamma.is_finite() {
            return Err(invalid("schedule.gamma", self.gamma, "a finite number"));
        }
        Ok(LrSchedule {
            config: self.clone(),
            steps_taken: 0,
        })
    }
}

/// A validated schedule: [`LrSchedule::multiplier`] gives the factor applied to every base LR.
///
/// As burn's [`LrScheduler`] it also keeps a position: each [`LrScheduler::step`] returns
/// `multiplier(steps_taken)` and then counts the step, so the `i`-th call (1-based) yields
/// `multiplier(i − 1)`, the value [`GroupedOptimizer::step`](crate::GroupedOptimizer::step)
/// uses at iteration `i`. It yields the **multiplier**, not a learning rate: pair it with
/// [`GroupedOptimizer`](crate::GroupedOptimizer)'s [`Optimizer`](burn::optim::Optimizer)
/// implementation, which multiplies every group's base LR by it. Its record is the position.
///
/// ```
/// use burn::lr_scheduler::LrScheduler;
/// use virtex_optim::LrScheduleConfig;
///
/// let mut schedule = LrScheduleConfig::new()
///     .with_warmup_steps(4)
///     .with_total_steps(10)
///     .init()?;
/// assert_eq!(schedule.step(), 0.0); // iteration 1 under warmup
/// assert_eq!(schedule.step(), 0.25);
/// assert_eq!(schedule.steps_taken(), 2);
/// # Ok::<(), virtex_optim::LookaheadError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    config: LrScheduleConfig,
    /// Scheduler steps taken (`LambdaLR`'s `last_epoch`).
    steps_taken: usize,
}

impl LrSchedule {
    /// The settings.
    pub fn config(&self) -> &LrScheduleConfig {
        &self.config
    }

    /// Scheduler steps taken so far: the next [`LrScheduler::step`] returns
    /// `multiplier(steps_taken)`.
    pub fn steps_taken(&self) -> usize {
        self.steps_taken
    }

    /// The same schedule positioned after `steps` scheduler steps (to resume a run, or to start
    /// a burn scheduler where an optimizer's own schedule stands).
    pub fn with_steps_taken(mut self, steps: usize) -> Self {
        self.set_steps_taken(steps);
        self
    }

    pub(crate) fn set_steps_taken(&mut self, steps: usize) {
        self.steps_taken = steps;
    }

    /// The LR multiplier after `step` scheduler steps (`LambdaLR`'s `last_epoch`).
    ///
    /// Upstream steps the scheduler once per iteration *after* the optimizer, so iteration
    /// `i` (1-based) runs at `multiplier(i − 1)`: under warmup the first iteration has LR 0.
    ///
    /// ```text
    /// s < W:  s / max(1, W)
    /// s ≥ W:  cosine     cos²((π/2)·(s − W)/(T − W))
    ///         linear     (T − s)/(T − W)
    ///         multistep  γ^(number of milestones ≤ s)
    ///         none       1
    /// ```
    /// clamped at ≥ 0. Past `T` these are upstream's formulas unchanged: `cosine` rises again
    /// (cos² is periodic) and `linear` stays at 0.
    pub fn multiplier(&self, step: usize) -> f64 {
        let c = &self.config;
        let multiplier = if step < c.warmup_steps {
            step as f64 / c.warmup_steps.max(1) as f64
        } else {
            let decay_span = (c.total_steps - c.warmup_steps) as f64;
            let since_warmup = step as f64 - c.warmup_steps as f64;
            match c.decay {
                LrDecay::Cosine => (since_warmup / decay_span * (PI / 2.0)).cos().powi(2),
                LrDecay::Linear => (c.total_steps as f64 - step as f64) / decay_span,
                LrDecay::Multistep => {
                    // bisect.bisect_right(milestones, step)
                    let passed = c.milestones.partition_point(|&m| m <= step);
                    c.gamma.powf(passed as f64)
                }
                LrDecay::Constant => 1.0,
            }
        };
        multiplier.max(0.0)
    }
}

impl LrScheduler for LrSchedule {
    /// The position ([`LrSchedule::steps_taken`]); the settings come from the configuration the
    /// schedule is rebuilt from, as for burn's own schedulers.
    type Record<B: Backend> = usize;

    /// Returns `multiplier(steps_taken)` and counts the step.
    fn step(&mut self) -> LearningRate {
        let multiplier = self.multiplier(self.steps_taken);
        self.set_steps_taken(self.steps_taken.saturating_add(1));
        multiplier
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        self.steps_taken
    }

    fn load_record<B: Backend>(self, record: Self::Record<B>) -> Self {
        self.with_steps_taken(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_starts_at_zero_and_reaches_one() {
        let schedule = LrScheduleConfig::new()
            .with_warmup_steps(4)
            .with_total_steps(12)
            .init()
            .unwrap();
        assert_eq!(schedule.multiplier(0), 0.0);
        assert_eq!(schedule.multiplier(2), 0.5);
        assert_eq!(schedule.multiplier(4), 1.0);
        assert!(schedule.multiplier(12).abs() < 1e-30);
    }

    #[test]
    fn burn_scheduler_yields_the_multipliers_in_order() {
        let schedule = LrScheduleConfig::new()
            .with_decay(LrDecay::Linear)
            .with_warmup_steps(2)
            .with_total_steps(6)
            .init()
            .unwrap();
        let mut scheduler = schedule.clone();
        let yielded: Vec<f64> = (0..7).map(|_| scheduler.step()).collect();
        assert_eq!(yielded, [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
        let expected: Vec<f64> = (0..7).map(|s| schedule.multiplier(s)).collect();
        assert_eq!(yielded, expected);
        assert_eq!(scheduler.steps_taken(), 7);
    }

    #[test]
    fn rejects_bad_settings() {
        let bad = LrScheduleConfig::new()
            .with_warmup_steps(10)
            .with_total_steps(10);
        assert!(bad.init().unwrap_err().to_string().contains("warmup_steps"));
        let unsorted = LrScheduleConfig::new().with_milestones(vec![5, 3]);
        assert!(unsorted
            .init()
            .unwrap_err()
            .to_string()
            .contains("milestones"));
        assert!(LrDecay::from_name("step").is_err());
        assert_eq!(LrDecay::from_name("none").unwrap(), LrDecay::Constant);
    }
}
