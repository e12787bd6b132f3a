//! `metrics.jsonl` (one JSON object a line, told apart by `"kind"`: `"train"` for a logged
//! iteration, `"val"` for a validation pass, `"samples"` for the captions of the sample
//! validation images) and the PNG plot of losses, learning rates and gradient norm.

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
    /// Device memory held by the backend's allocator on CUDA (bytes reserved by its memory
    /// pool, what `nvidia-smi` charges to the process, less the CUDA context); absent on the
    /// CPU and in older logs. See [`device_memory_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory_bytes: Option<u64>,
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

/// The captions of the sample validation images after one validation pass
/// (`train.sample_captions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplesRecord {
    /// Always `"samples"`.
    pub kind: String,
    /// Iteration after which validation ran.
    pub iteration: u64,
    /// One caption per sample image, in the validation split's order.
    pub samples: Vec<SampleCaption>,
}

/// The caption of one sample image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleCaption {
    /// The image id (COCO's number, or the file stem).
    pub image_id: virtex_data::ImageId,
    /// The image file as the dataset names it.
    pub file: String,
    /// The decoded caption.
    pub caption: String,
}

impl SamplesRecord {
    /// The record of the sample captions after `iteration`.
    pub fn new(iteration: u64, samples: Vec<SampleCaption>) -> Self {
        Self {
            kind: "samples".into(),
            iteration,
            samples,
        }
    }
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
            device_memory_bytes: None,
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

    /// Reads back the loss records of a run: (train, val). Lines of other kinds (`samples`,
    /// and any a later version adds) and unreadable lines are skipped.
    pub fn read(run_dir: &Path) -> Result<(Vec<TrainRecord>, Vec<ValRecord>), TrainError> {
        let mut train = Vec::new();
        let mut val = Vec::new();
        for (kind, line) in Self::lines(run_dir)? {
            match kind.as_str() {
                "train" => train.extend(serde_json::from_str::<TrainRecord>(&line).ok()),
                "val" => val.extend(serde_json::from_str::<ValRecord>(&line).ok()),
                _ => {}
            }
        }
        Ok((train, val))
    }

    /// Reads back the sample captions of a run, oldest first.
    pub fn read_samples(run_dir: &Path) -> Result<Vec<SamplesRecord>, TrainError> {
        Ok(Self::lines(run_dir)?
            .into_iter()
            .filter(|(kind, _)| kind == "samples")
            .filter_map(|(_, line)| serde_json::from_str(&line).ok())
            .collect())
    }

    /// Every line of `metrics.jsonl` with its `kind` (lines without one are skipped).
    fn lines(run_dir: &Path) -> Result<Vec<(String, String)>, TrainError> {
        let path = run_dir.join("metrics.jsonl");
        let file = File::open(&path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        #[derive(Deserialize)]
        struct Kind {
            kind: String,
        }
        Ok(BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let kind = serde_json::from_str::<Kind>(&line).ok()?.kind;
                Some((kind, line))
            })
            .collect())
    }
}

/// Device memory held by backend `B`'s allocator on `device`, on CUDA: the bytes its memory
/// pool has reserved (cubecl's `MemoryUsage::bytes_reserved`). `None` on other backends, and in
/// builds without the `cuda` feature, where no CUDA device can exist. Burn 0.21's `Backend`
/// trait has no memory query, so this asks the CUDA runtime's client for the device directly.
pub fn device_memory_bytes<B: burn::tensor::backend::Backend>(device: &B::Device) -> Option<u64> {
    if !virtex_device::runs_on_cuda::<B>() {
        return None;
    }
    cuda_memory_bytes(device)
}

#[cfg(feature = "cuda")]
fn cuda_memory_bytes<D: 'static>(device: &D) -> Option<u64> {
    use burn::cubecl::cuda::{CudaDevice, CudaRuntime};
    use burn::cubecl::Runtime;
    // Every CUDA backend of burn (plain, fused, under autodiff) has `CudaDevice` as its device.
    let device = (device as &dyn std::any::Any).downcast_ref::<CudaDevice>()?;
    let usage = CudaRuntime::client(device).memory_usage().ok()?;
    Some(usage.bytes_reserved)
}

#[cfg(not(feature = "cuda"))]
fn cuda_memory_bytes<D>(_device: &D) -> Option<u64> {
    None
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

/// Colours of the learning-rate groups, in group order.
const GROUP_COLOURS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

/// Draws three panels against the iteration into a PNG: training and validation loss; the
/// learning rate of each parameter group (log scale: upstream's groups differ 200-fold); and the
/// gradient norm before clipping. Non-finite values (skipped steps) are left out.
pub fn plot_losses(run_dir: &Path, output: &Path) -> Result<(), TrainError> {
    let (train, val) = MetricsLog::read(run_dir)?;
    let plot_error = |message: String| TrainError::Io {
        path: output.to_path_buf(),
        source: std::io::Error::other(message),
    };
    let draw = |e: &dyn std::fmt::Display| plot_error(e.to_string());
    // Registering twice is harmless; plotters keeps the first registration.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);

    let finite = |points: Vec<(f64, f64)>| -> Vec<(f64, f64)> {
        points.into_iter().filter(|(_, y)| y.is_finite()).collect()
    };
    let train_points = finite(train.iter().map(|r| (r.iteration as f64, r.loss)).collect());
    let val_points = finite(
        val.iter()
            .map(|r| (r.iteration as f64, r.val_loss))
            .collect(),
    );
    let grad_points = finite(
        train
            .iter()
            .map(|r| (r.iteration as f64, r.grad_norm))
            .collect(),
    );
    // Group names in first-seen order; a log scale cannot show 0 (the first warmup step).
    let mut groups: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for record in &train {
        for (name, lr) in &record.learning_rates {
            let index = match groups.iter().position(|(group, _)| group == name) {
                Some(index) => index,
                None => {
                    groups.push((name.clone(), Vec::new()));
                    groups.len() - 1
                }
            };
            if lr.is_finite() && *lr > 0.0 {
                groups[index].1.push((record.iteration as f64, *lr));
            }
        }
    }

    let all = train_points.iter().chain(&val_points);
    let x_max = train
        .iter()
        .map(|r| r.iteration as f64)
        .chain(all.clone().map(|p| p.0))
        .fold(1.0, f64::max)
        * 1.02;
    let y_max = all.clone().map(|p| p.1).fold(f64::MIN, f64::max).max(1e-3);
    let y_min = all.map(|p| p.1).fold(f64::MAX, f64::min).min(y_max) * 0.95;
    let lrs = groups
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1));
    let lr_max = lrs.clone().fold(f64::MIN, f64::max);
    let lr_min = lrs.fold(f64::MAX, f64::min);
    let (lr_min, lr_max) = if lr_max > 0.0 {
        // Four decades at most: a cosine schedule ends near 0, which would squash the rest;
        // lower values run off the bottom of the panel.
        ((lr_min / 1.5).max(lr_max * 1e-4), lr_max * 1.5)
    } else {
        (1e-4, 1.0)
    };
    let grad_max = grad_points.iter().map(|p| p.1).fold(1e-3, f64::max) * 1.05;

    let root = BitMapBackend::new(output, (900, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let (top, rest) = root.split_vertically(480);
    let (middle, bottom) = rest.split_vertically(240);

    let mut chart = ChartBuilder::on(&top)
        .caption("VirTex pretraining loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, y_min..y_max * 1.05)
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc("loss")
        .draw()
        .map_err(|e| draw(&e))?;
    chart
        .draw_series(LineSeries::new(train_points, &BLUE))
        .map_err(|e| draw(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
    chart
        .draw_series(LineSeries::new(val_points.clone(), &RED))
        .map_err(|e| draw(&e))?
        .label("val")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
    chart
        .draw_series(val_points.iter().map(|p| Circle::new(*p, 3, RED.filled())))
        .map_err(|e| draw(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| draw(&e))?;

    let mut chart = ChartBuilder::on(&middle)
        .caption("learning rate per parameter group", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (lr_min..lr_max).log_scale())
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .y_desc("lr")
        .y_label_formatter(&|lr| format!("{lr:.0e}"))
        .draw()
        .map_err(|e| draw(&e))?;
    for (index, (name, points)) in groups.into_iter().enumerate() {
        let colour = GROUP_COLOURS[index % GROUP_COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points, &colour))
            .map_err(|e| draw(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| draw(&e))?;

    let mut chart = ChartBuilder::on(&bottom)
        .caption("gradient norm (before clipping)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..grad_max)
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_desc("grad norm")
        .draw()
        .map_err(|e| draw(&e))?;
    chart
        .draw_series(LineSeries::new(grad_points, &BLACK))
        .map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))
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
