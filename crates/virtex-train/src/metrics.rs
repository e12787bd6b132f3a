//! `metrics.jsonl` (one JSON object per logged iteration) and the PNG loss plot.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_file_atomically;
use crate::error::TrainError;
use crate::step::LossValues;

/// One logged training iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Always `"train"`.
    pub kind: String,
    /// 1-based iteration number.
    pub iteration: u64,
    /// Total loss (forward + backward captioning).
    #[serde(with = "non_finite")]
    pub loss: f64,
    /// The model's loss components by name, as top-level keys (`captioning_forward`, and
    /// `captioning_backward` with a backward head).
    #[serde(flatten)]
    pub components: BTreeMap<String, LossValue>,
    /// Global gradient L2 norm before clipping.
    #[serde(with = "non_finite")]
    pub grad_norm: f64,
    /// Learning rate of each parameter group, by group name.
    pub learning_rates: Vec<(String, f64)>,
    /// Training throughput over the last logging window.
    pub images_per_second: f64,
    /// Steps skipped so far because of non-finite loss or gradients.
    pub skipped_steps: u64,
    /// Images skipped so far as unreadable (`data.skip_bad_images`; each is also logged with
    /// its file name and the reason).
    #[serde(default)]
    pub skipped_images: u64,
}

/// One validation pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValRecord {
    /// Always `"val"`.
    pub kind: String,
    /// Iteration after which validation ran.
    pub iteration: u64,
    /// Teacher-forced total loss.
    #[serde(with = "non_finite")]
    pub val_loss: f64,
    /// The loss components by name, as top-level keys.
    #[serde(flatten)]
    pub components: BTreeMap<String, LossValue>,
}

/// A loss value in `metrics.jsonl`: a number, or NaN/±∞ written as a string (see
/// [`non_finite`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LossValue(#[serde(with = "non_finite")] pub f64);

fn components(losses: &LossValues) -> BTreeMap<String, LossValue> {
    losses
        .components
        .iter()
        .map(|(name, value)| (name.clone(), LossValue(*value)))
        .collect()
}

impl TrainRecord {
    /// The record of a logged iteration.
    pub fn new(
        iteration: u64,
        losses: &LossValues,
        grad_norm: f64,
        learning_rates: Vec<(String, f64)>,
        images_per_second: f64,
        skipped_steps: u64,
    ) -> Self {
        Self {
            kind: "train".into(),
            iteration,
            loss: losses.loss,
            components: components(losses),
            grad_norm,
            learning_rates,
            images_per_second,
            skipped_steps,
            skipped_images: 0,
        }
    }

    /// The component called `name`.
    pub fn component(&self, name: &str) -> Option<f64> {
        self.components.get(name).map(|value| value.0)
    }
}

impl ValRecord {
    /// The record of a validation pass after `iteration`.
    pub fn new(iteration: u64, losses: &LossValues) -> Self {
        Self {
            kind: "val".into(),
            iteration,
            val_loss: losses.loss,
            components: components(losses),
        }
    }

    /// The component called `name`.
    pub fn component(&self, name: &str) -> Option<f64> {
        self.components.get(name).map(|value| value.0)
    }
}

/// Appends records to `metrics.jsonl`, one flushed line each (a crash loses nothing written).
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens (appending) `run_dir/metrics.jsonl`.
    pub fn open(run_dir: &Path) -> Result<Self, TrainError> {
        let path = run_dir.join("metrics.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TrainError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path, file })
    }

    /// Appends one record.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), TrainError> {
        let line = serde_json::to_string(record).map_err(|err| TrainError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(err),
        })?;
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|source| TrainError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Drops records after `iteration` (used on resume: the log may run ahead of the last
    /// checkpoint when the process was killed between a log line and the next checkpoint).
    pub fn truncate_after(run_dir: &Path, iteration: u64) -> Result<(), TrainError> {
        let path = run_dir.join("metrics.jsonl");
        if !path.exists() {
            return Ok(());
        }
        let io = |source| TrainError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let kept: Vec<String> = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("iteration").and_then(|i| i.as_u64()))
                    .is_some_and(|i| i <= iteration)
            })
            .collect();
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        write_file_atomically(&path, text.as_bytes())
    }

    /// Reads back every record of a run: (train, val).
    pub fn read(run_dir: &Path) -> Result<(Vec<TrainRecord>, Vec<ValRecord>), TrainError> {
        let path = run_dir.join("metrics.jsonl");
        let file = File::open(&path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        let mut train = Vec::new();
        let mut val = Vec::new();
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if let Ok(record) = serde_json::from_str::<TrainRecord>(&line) {
                train.push(record);
            } else if let Ok(record) = serde_json::from_str::<ValRecord>(&line) {
                val.push(record);
            }
        }
        Ok((train, val))
    }
}

/// `f64` fields that may be NaN or ±∞ (a skipped step's loss or gradient norm): JSON has no
/// such numbers (serde_json would write `null` and fail to read it back), so they are written as
/// the strings `"NaN"`, `"inf"` and `"-inf"`, which Python's `float()` also reads.
mod non_finite {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_f64(*value)
        } else if value.is_nan() {
            serializer.serialize_str("NaN")
        } else if *value > 0.0 {
            serializer.serialize_str("inf")
        } else {
            serializer.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Number(f64),
        Text(String),
        Null(()),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        match Written::deserialize(deserializer)? {
            Written::Number(value) => Ok(value),
            Written::Text(text) => match text.parse::<f64>() {
                Ok(value) if !value.is_finite() => Ok(value),
                _ => Err(serde::de::Error::custom(format!(
                    "`{text}`: expected a number, \"NaN\", \"inf\" or \"-inf\""
                ))),
            },
            // What serde_json writes for NaN/±∞ (older logs hold it): read as NaN.
            Written::Null(()) => Ok(f64::NAN),
        }
    }
}

const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

/// Draws training and validation loss against the iteration into a PNG.
pub fn plot_losses(run_dir: &Path, output: &Path) -> Result<(), TrainError> {
    let (train, val) = MetricsLog::read(run_dir)?;
    let plot_error = |message: String| TrainError::Io {
        path: output.to_path_buf(),
        source: std::io::Error::other(message),
    };
    // Registering twice is harmless; plotters keeps the first registration.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);

    let train_points: Vec<(f64, f64)> = train
        .iter()
        .map(|r| (r.iteration as f64, r.loss))
        .filter(|(_, y)| y.is_finite())
        .collect();
    let val_points: Vec<(f64, f64)> = val
        .iter()
        .map(|r| (r.iteration as f64, r.val_loss))
        .filter(|(_, y)| y.is_finite())
        .collect();
    let all = train_points.iter().chain(&val_points);
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.clone().map(|p| p.1).fold(f64::MIN, f64::max).max(1e-3);
    let y_min = all.map(|p| p.1).fold(f64::MAX, f64::min).min(y_max) * 0.95;

    let root = BitMapBackend::new(output, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("VirTex pretraining loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max * 1.02, y_min..y_max * 1.05)
        .map_err(|e| plot_error(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc("loss")
        .draw()
        .map_err(|e| plot_error(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(train_points, &BLUE))
        .map_err(|e| plot_error(e.to_string()))?
        .label("train")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
    chart
        .draw_series(LineSeries::new(val_points.clone(), &RED))
        .map_err(|e| plot_error(e.to_string()))?
        .label("val")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    chart
        .draw_series(val_points.iter().map(|p| Circle::new(*p, 3, RED.filled())))
        .map_err(|e| plot_error(e.to_string()))?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| plot_error(e.to_string()))?;
    root.present().map_err(|e| plot_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(iteration: u64, loss: f64, grad_norm: f64) -> TrainRecord {
        let losses = LossValues {
            loss,
            components: vec![
                ("captioning_forward".into(), loss),
                ("captioning_backward".into(), 0.0),
            ],
        };
        TrainRecord::new(
            iteration,
            &losses,
            grad_norm,
            vec![("visual".into(), 0.1)],
            10.0,
            0,
        )
    }

    #[test]
    fn non_finite_values_round_trip_and_the_plot_skips_them() {
        let run = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(run.path()).unwrap();
        log.append(&record(1, 5.0, 2.0)).unwrap();
        log.append(&record(2, f64::NAN, f64::INFINITY)).unwrap();
        log.append(&record(3, 4.0, f64::NEG_INFINITY)).unwrap();
        let text = std::fs::read_to_string(run.path().join("metrics.jsonl")).unwrap();
        assert!(text.contains(r#""loss":"NaN""#), "{text}");
        assert!(text.contains(r#""grad_norm":"inf""#), "{text}");

        let (train, val) = MetricsLog::read(run.path()).unwrap();
        assert!(val.is_empty());
        assert_eq!(train.len(), 3);
        assert!(train[1].loss.is_nan());
        assert_eq!(train[1].grad_norm, f64::INFINITY);
        assert_eq!(train[2].grad_norm, f64::NEG_INFINITY);
        assert_eq!(train[2], record(3, 4.0, f64::NEG_INFINITY));

        // Earlier logs wrote `null` for these; they still read.
        let old = r#"{"kind":"train","iteration":4,"loss":null,"captioning_forward":null,"captioning_backward":0.0,"grad_norm":null,"learning_rates":[],"images_per_second":1.0,"skipped_steps":1}"#;
        let parsed: TrainRecord = serde_json::from_str(old).unwrap();
        assert!(parsed.loss.is_nan() && parsed.grad_norm.is_nan());
        assert!(parsed.component("captioning_forward").unwrap().is_nan());
        assert_eq!(parsed.component("captioning_backward"), Some(0.0));
        assert_eq!(train[0].component("captioning_forward"), Some(5.0));

        let garbage = old.replace(r#""loss":null"#, r#""loss":"lots""#);
        assert!(serde_json::from_str::<TrainRecord>(&garbage).is_err());

        plot_losses(run.path(), &run.path().join("loss.png")).unwrap();
        assert!(run.path().join("loss.png").is_file());
    }
}
