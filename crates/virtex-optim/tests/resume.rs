//! Saving mid-cycle and resuming gives exactly the uninterrupted run.
mod common;

use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use common::*;
use virtex_optim::{
    GroupedOptimizerConfig, GroupedOptimizerRecord, InnerOptimizer, LookaheadConfig,
    LookaheadError, LookaheadRecord, LrScheduleConfig, OptimizerName, TorchSgdConfig,
};

type Recorder_ = BinBytesRecorder<FullPrecisionSettings>;
type GroupedRecord =
    GroupedOptimizerRecord<<InnerOptimizer<Tiny<AB>, AB> as Optimizer<Tiny<AB>, AB>>::Record, AB>;

fn config() -> GroupedOptimizerConfig {
    // VirTex's groups and Lookahead, a short warmup + cosine schedule, clipping active.
    GroupedOptimizerConfig::new()
        .with_schedule(
            LrScheduleConfig::new()
                .with_warmup_steps(2)
                .with_total_steps(20),
        )
        .with_clip_grad_norm(Some(4.0))
}

/// The model as a checkpoint would restore it: same values, fresh parameter ids.
fn reloaded(model: &Tiny<AB>) -> Tiny<AB> {
    let current = values(model);
    let prefixed = current
        .into_iter()
        .map(|(path, data)| (format!("w.{path}"), data))
        .collect();
    tiny(&prefixed, "w")
}

#[test]
fn grouped_optimizer_resumes_exactly_from_a_mid_cycle_record() {
    resumes_exactly(OptimizerName::Sgd);
}

#[test]
fn grouped_adamw_resumes_exactly_from_a_mid_cycle_record() {
    resumes_exactly(OptimizerName::AdamW);
}

#[test]
#[should_panic(expected = "the optimizer state was saved by sgd, but this optimizer is adamw")]
fn an_sgd_record_is_never_read_as_adamw() {
    let fixture = tensors("clipping.safetensors");
    let model = tiny(&fixture, "init");
    let record = config().init(&model).unwrap().to_record();
    let adamw = config().with_optimizer(OptimizerName::AdamW);
    let _ = adamw
        .init(&model)
        .unwrap()
        .load_record(record, model.clone());
}

fn resumes_exactly(optimizer: OptimizerName) {
    let config = || config().with_optimizer(optimizer);
    // The clipping fixture provides 14 steps of gradients, two of them non-finite.
    let fixture = tensors("clipping.safetensors");
    let steps = 14;
    let save_after = 7; // Lookahead counter 1 (one skipped step before): mid-cycle.

    let mut model = tiny(&fixture, "init");
    let mut optim = config().init(&model).unwrap();
    let mut reference = Vec::new();
    let mut saved = None;
    for step in 1..=steps {
        let grads = grads_at(&model, &fixture, step);
        model = optim.step(model, grads).0;
        reference.push(values(&model));
        if step == save_after {
            assert_ne!(optim.lookahead_counter(), Some(0), "save must be mid-cycle");
            let bytes = Recorder_::default()
                .record(optim.to_record(), ())
                .expect("record");
            saved = Some((bytes, reloaded(&model), optim.lookahead_counter()));
        }
    }

    let (bytes, model, counter) = saved.unwrap();
    let record: GroupedRecord = Recorder_::default()
        .load(bytes, &Default::default())
        .expect("load");
    let fresh = config().init(&model).unwrap();
    let (mut optim, mut model) = fresh.load_record(record, model).unwrap();
    assert_eq!(optim.lookahead_counter(), counter);
    assert_eq!(optim.schedule_step(), save_after);
    for step in save_after + 1..=steps {
        let grads = grads_at(&model, &fixture, step);
        model = optim.step(model, grads).0;
        for (path, data) in values(&model) {
            // Bitwise: the same operations on the same values.
            assert_eq!(data, reference[step - 1][&path], "step {step}: {path}");
        }
    }
}

#[test]
fn record_must_fit_the_module() {
    let fixture = tensors("clipping.safetensors");
    let model = tiny(&fixture, "init");
    let optim = config().init(&model).unwrap();
    let mut record = optim.to_record();
    record.params[3].shape = vec![6, 4];
    let err = config()
        .init(&model)
        .unwrap()
        .load_record(record, model.clone())
        .err()
        .expect("shape mismatch is an error");
    assert!(
        matches!(&err, LookaheadError::RecordMismatch { subject, .. } if subject == "textual.visual_projection.weight"),
        "{err}"
    );

    let mut record = optim.to_record();
    record.params.pop();
    let err = config()
        .init(&model)
        .unwrap()
        .load_record(record, model.clone())
        .err()
        .expect("missing parameter is an error");
    assert!(err.to_string().contains("textual.output.bias"), "{err}");

    let record = optim.to_record();
    let no_decay = config().with_groups(virtex_optim::ParamGroupsConfig::new().with_no_decay(None));
    let err = no_decay
        .init(&model)
        .unwrap()
        .load_record(record, model)
        .err()
        .expect("different groups are an error");
    assert!(err.to_string().contains("parameter groups"), "{err}");
}

#[test]
fn lookahead_record_round_trip() {
    let fixture = tensors("lookahead_sgd.safetensors");
    let sgd = || TorchSgdConfig::new().init::<AB, Tiny<AB>>(0.01).unwrap();
    let mut model = tiny(&fixture, "init");
    let mut optim = LookaheadConfig::new().init(sgd(), &model).unwrap();
    let mut record_bytes = None;
    let mut reference = Vec::new();
    for step in 1..=13 {
        let grads: GradientsParams = grads_at(&model, &fixture, step);
        model = optim.step(0.05, model, grads);
        reference.push(values(&model));
        if step == 7 {
            // burn records keep parameter ids, so the module's own record restores them.
            let bytes = Recorder_::default().record(optim.to_record(), ()).unwrap();
            record_bytes = Some((bytes, model.clone().into_record()));
        }
    }
    let (bytes, model_record) = record_bytes.unwrap();
    let record: LookaheadRecord<_, AB> = Recorder_::default()
        .load(bytes, &Default::default())
        .unwrap();
    let mut model = tiny(&fixture, "init").load_record(model_record);
    let mut optim = LookaheadConfig::new()
        .init(sgd(), &model)
        .unwrap()
        .load_record(record);
    assert_eq!(optim.counter(), 2);
    for step in 8..=13 {
        let grads = grads_at(&model, &fixture, step);
        model = optim.step(0.05, model, grads);
        for (path, data) in values(&model) {
            assert_eq!(data, reference[step - 1][&path], "step {step}: {path}");
        }
    }
}
