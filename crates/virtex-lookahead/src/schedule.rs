//! Learning-rate schedules of VirTex (`virtex/optim/lr_scheduler.py`): linear warmup, then one
//! of four decays. One multiplier applies to every parameter group's base LR.

use std::f64::consts::PI;

use burn::config::Config;

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
        })
    }
}

/// A validated schedule: [`LrSchedule::multiplier`] gives the factor applied to every base LR.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    config: LrScheduleConfig,
}

impl LrSchedule {
    /// The settings.
    pub fn config(&self) -> &LrScheduleConfig {
        &self.config
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
