//! burn's `Optimizer` and `LrScheduler` implementations: `GroupedOptimizer` driven through
//! burn's traits by our `LrSchedule` gives exactly what its own `step` gives, and both records
//! resume a run as burn-train's checkpoints would.
mod common;

use std::collections::HashMap;

use burn::lr_scheduler::LrScheduler;
use burn::module::Module;
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::DeviceOps;
use burn::tensor::{Device, TensorData};
use common::*;
use virtex_optim::{
    trainable_params, GroupedOptimizer, GroupedOptimizerConfig, InnerOptimizer, LookaheadError,
    LrDecay, LrScheduleConfig, StepReport,
};

type Recorder_ = BinBytesRecorder<FullPrecisionSettings>;
type Grouped = GroupedOptimizer<InnerOptimizer<Tiny<AB>, AB>, Tiny<AB>, AB>;
type GroupedRecord = <Grouped as Optimizer<Tiny<AB>, AB>>::Record;

/// The clipping fixture's configuration: LR groups `visual` 0.2 and `common` 0.05 (plus a
/// no-decay group), linear decay after a 2-step warmup, global clipping at 4, Lookahead k = 5;
/// 14 steps of gradients, two of them non-finite.
fn clipping_config() -> GroupedOptimizerConfig {
    python_config(&json("clipping.json"))
}

/// Reports must agree field by field; the norm of a skipped step is NaN, so it is compared by
/// its bits (`NaN != NaN` under `PartialEq`).
fn assert_same_report(actual: &StepReport, expected: &StepReport, step: usize) {
    assert_eq!(actual.iteration, expected.iteration, "step {step}");
    assert_eq!(
        actual.lr_multiplier.to_bits(),
        expected.lr_multiplier.to_bits(),
        "step {step}: multiplier"
    );
    assert_eq!(
        actual.learning_rates, expected.learning_rates,
        "step {step}"
    );
    assert_eq!(
        actual.grad_norm.to_bits(),
        expected.grad_norm.to_bits(),
        "step {step}: grad norm {} vs {}",
        actual.grad_norm,
        expected.grad_norm
    );
    assert_eq!(
        actual.clip_coefficient.to_bits(),
        expected.clip_coefficient.to_bits(),
        "step {step}: clip coefficient"
    );
    assert_eq!(actual.skipped, expected.skipped, "step {step}");
    assert_eq!(
        actual.lookahead_synced, expected.lookahead_synced,
        "step {step}"
    );
}

fn assert_same_values(
    actual: &HashMap<String, TensorData>,
    expected: &HashMap<String, TensorData>,
    what: &str,
) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    for (path, data) in actual {
        // Bitwise: both paths must run the same operations on the same values.
        assert_eq!(*data, expected[path], "{what}: {path}");
    }
}

#[test]
fn burn_optimizer_with_our_scheduler_matches_the_inherent_step_bit_for_bit() {
    let fixture = tensors("clipping.safetensors");
    let config = clipping_config();

    let mut inherent_model = tiny(&fixture, "init");
    let mut inherent = config.init(&inherent_model).unwrap();

    let mut burn_model = tiny(&fixture, "init");
    // The optimizer's own schedule is VirTex's default (10K warmup: multipliers ≈ 0 here). Had
    // the burn path applied it on top of the external multiplier, parameters would barely move
    // and the comparison below would fail.
    let mut burn_optim = config
        .clone()
        .with_schedule(LrScheduleConfig::new())
        .init(&burn_model)
        .unwrap();
    let mut scheduler = config.schedule.init().unwrap();

    let (mut clipped, mut skipped, mut synced) = (0, 0, 0);
    let mut group_lrs = Vec::new();
    for step in 1..=14 {
        let grads = grads_at(&inherent_model, &fixture, step);
        let (model, report) = inherent.step(inherent_model, grads);
        inherent_model = model;

        let grads = grads_at(&burn_model, &fixture, step);
        let lr = scheduler.step();
        burn_model = Optimizer::step(&mut burn_optim, lr, burn_model, grads);

        assert_eq!(lr, report.lr_multiplier, "step {step}");
        let burn_report = burn_optim.last_report().expect("a step was taken");
        assert_same_report(burn_report, &report, step);
        let values_burn = values(&burn_model);
        assert_same_values(
            &values_burn,
            &values(&inherent_model),
            &format!("step {step}"),
        );
        // Both are also PyTorch's trajectory (the fixture), so the equality is not that of two
        // equally wrong runs.
        let error = max_abs_diff(&values_burn, &fixture, &format!("param.{step}"));
        assert!(error <= PARAM_TOLERANCE, "step {step}: max |Δ| {error:e}");

        clipped += usize::from(report.clip_coefficient < 1.0);
        skipped += usize::from(report.skipped);
        synced += usize::from(report.lookahead_synced);
        group_lrs.push(report.learning_rates.clone());
    }
    // The trajectory covers what the test claims: warmup from 0, two LR groups with different
    // LRs, active clipping, skipped steps and Lookahead synchronisations.
    assert_eq!(group_lrs[0].iter().map(|g| g.lr).sum::<f64>(), 0.0);
    let last = &group_lrs[1];
    assert_eq!(last.len(), 2);
    assert_eq!(
        (last[0].name.as_str(), last[1].name.as_str()),
        ("visual", "common")
    );
    assert!(
        last[0].lr > 0.0 && last[0].lr == 4.0 * last[1].lr,
        "{last:?}"
    );
    assert!(clipped >= 1, "no step was clipped");
    assert_eq!(skipped, 2);
    assert!(synced >= 2, "{synced} Lookahead synchronisations");

    assert_eq!(burn_optim.schedule_step(), inherent.schedule_step());
    assert_eq!(burn_optim.lookahead_counter(), inherent.lookahead_counter());
    assert_same_values(
        &values(&burn_optim.with_slow_weights(burn_model)),
        &values(&inherent.with_slow_weights(inherent_model)),
        "slow weights",
    );
}

#[test]
fn the_lr_of_burn_step_multiplies_every_group_base_lr() {
    let fixture = tensors("grouped.safetensors");
    let constant = LrScheduleConfig::new()
        .with_decay(LrDecay::Constant)
        .with_warmup_steps(0)
        .with_total_steps(10);
    let config = python_config(&json("grouped.json")).with_schedule(constant);

    // lr = 1 through burn's trait ≡ the inherent step under a constant schedule (base LRs).
    let mut inherent_model = tiny(&fixture, "init");
    let mut inherent = config.init(&inherent_model).unwrap();
    let mut burn_model = tiny(&fixture, "init");
    let mut burn_optim = config.init(&burn_model).unwrap();
    for step in 1..=3 {
        let grads = grads_at(&inherent_model, &fixture, step);
        inherent_model = inherent.step(inherent_model, grads).0;
        let grads = grads_at(&burn_model, &fixture, step);
        burn_model = Optimizer::step(&mut burn_optim, 1.0, burn_model, grads);
        let rates = &burn_optim.last_report().unwrap().learning_rates;
        let bases: Vec<f64> = burn_optim.groups().iter().map(|g| g.lr).collect();
        assert!(rates.iter().all(|r| bases.contains(&r.lr)), "{rates:?}");
        assert_same_values(
            &values(&burn_model),
            &values(&inherent_model),
            &format!("step {step}"),
        );
    }

    // A different multiplier gives different parameters: the comparison above is sensitive.
    let mut half_model = tiny(&fixture, "init");
    let mut half = config.init(&half_model).unwrap();
    let grads = grads_at(&half_model, &fixture, 1);
    half_model = Optimizer::step(&mut half, 0.5, half_model, grads);
    let first = values(&half_model);
    let start = values(&tiny(&fixture, "init"));
    assert!(first.iter().any(|(path, data)| *data != start[path]));
    let reference = tiny(&fixture, "init");
    let mut full = config.init(&reference).unwrap();
    let grads = grads_at(&reference, &fixture, 1);
    let full_model = Optimizer::step(&mut full, 1.0, reference, grads);
    let full_values = values(&full_model);
    assert!(first.iter().any(|(path, data)| *data != full_values[path]));
    assert_eq!(half.last_report().unwrap().lr_multiplier, 0.5);
}

/// Registers `fraction ×` the fixture's gradients of `step` (exact for 0.5: a power of two).
fn scaled_grads(
    model: &Tiny<AB>,
    fixture: &HashMap<String, TensorData>,
    step: usize,
    fraction: f32,
) -> GradientsParams {
    let mut grads = GradientsParams::new();
    for entry in trainable_params(model) {
        let data = &fixture[&format!("grad.{step}.{}", entry.path)];
        let scaled: Vec<f32> = data
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(|g| g * fraction)
            .collect();
        register(
            &mut grads,
            entry.id,
            TensorData::new(scaled, data.shape.clone()),
        );
    }
    grads
}

#[test]
fn step_multi_sums_the_gradients_of_all_devices() {
    let fixture = tensors("clipping.safetensors");
    let config = clipping_config();
    let device_id = Device::<Inner>::default().id();

    let mut single_model = tiny(&fixture, "init");
    let mut single = config.init(&single_model).unwrap();
    let mut multi_model = tiny(&fixture, "init");
    let mut multi = config.init(&multi_model).unwrap();
    let mut scheduler = config.schedule.init().unwrap();
    for step in 1..=14 {
        let lr = scheduler.step();
        let grads = grads_at(&single_model, &fixture, step);
        single_model = Optimizer::step(&mut single, lr, single_model, grads);

        // Two half gradients, as two data-parallel replicas would send; ½g + ½g = g exactly.
        let halves = MultiGradientsParams {
            grads: vec![
                (scaled_grads(&multi_model, &fixture, step, 0.5), device_id),
                (scaled_grads(&multi_model, &fixture, step, 0.5), device_id),
            ],
        };
        multi_model = multi.step_multi(lr, multi_model, halves);
        assert_same_report(
            multi.last_report().unwrap(),
            single.last_report().unwrap(),
            step,
        );
        assert_same_values(
            &values(&multi_model),
            &values(&single_model),
            &format!("step {step}"),
        );
    }
}

#[test]
fn lr_schedule_record_round_trips() {
    let config = LrScheduleConfig::new()
        .with_warmup_steps(3)
        .with_total_steps(12);
    let mut running = config.init().unwrap();
    for _ in 0..5 {
        running.step();
    }
    let record = LrScheduler::to_record::<AB>(&running);
    assert_eq!(record, 5);
    let bytes = <Recorder_ as Recorder<AB>>::record(&Recorder_::default(), record, ())
        .expect("serialise the scheduler record");
    let loaded: usize = Recorder::<AB>::load(&Recorder_::default(), bytes, &Default::default())
        .expect("deserialise the scheduler record");
    let mut resumed = config.init().unwrap().load_record::<AB>(loaded);
    assert_eq!(resumed.steps_taken(), 5);

    let fresh_first = config.init().unwrap().step();
    let reference = config.init().unwrap();
    for step in 5..15 {
        let expected = running.step();
        let actual = resumed.step();
        assert_eq!(actual.to_bits(), expected.to_bits(), "step {step}");
        assert_eq!(actual, reference.multiplier(step), "step {step}");
        if step == 5 {
            // Past the warmup, cosine: a real value, not the fresh schedule's 0.
            assert_eq!(fresh_first, 0.0);
            assert!(actual > 0.8 && actual < 1.0, "{actual}");
        }
    }
}

#[test]
fn burn_records_resume_a_run_exactly() {
    // As burn-train checkpoints: the model's burn record (keeps parameter ids), the optimizer's
    // `Optimizer::to_record` and the scheduler's `LrScheduler::to_record`, saved mid-cycle.
    let fixture = tensors("clipping.safetensors");
    let config = clipping_config();
    let save_after = 7;

    let mut model = tiny(&fixture, "init");
    let mut optim = config.init(&model).unwrap();
    let mut scheduler = config.schedule.init().unwrap();
    let mut reference = Vec::new();
    let mut saved = None;
    for step in 1..=14 {
        let grads = grads_at(&model, &fixture, step);
        model = Optimizer::step(&mut optim, scheduler.step(), model, grads);
        reference.push(values(&model));
        if step == save_after {
            assert_ne!(optim.lookahead_counter(), Some(0), "save must be mid-cycle");
            let optim_bytes = Recorder_::default()
                .record(Optimizer::to_record(&optim), ())
                .expect("serialise the optimizer record");
            saved = Some((
                optim_bytes,
                LrScheduler::to_record::<AB>(&scheduler),
                model.clone().into_record(),
                optim.lookahead_counter(),
            ));
        }
    }

    let (optim_bytes, scheduler_record, model_record, counter) = saved.unwrap();
    let record: GroupedRecord = Recorder_::default()
        .load(optim_bytes, &Default::default())
        .expect("deserialise the optimizer record");
    // A freshly built model (new ids) restored from its record: the saved ids come back.
    let mut model = tiny(&fixture, "init").load_record(model_record);
    let mut optim = Optimizer::load_record(config.init(&model).unwrap(), record);
    let mut scheduler = config
        .schedule
        .init()
        .unwrap()
        .load_record::<AB>(scheduler_record);
    assert_eq!(optim.schedule_step(), save_after);
    assert_eq!(optim.lookahead_counter(), counter);
    assert_eq!(scheduler.steps_taken(), save_after);
    // The optimizer's own schedule is at the same position: a clone of it is the scheduler.
    assert_eq!(optim.schedule(), &scheduler);
    for step in save_after + 1..=14 {
        let grads = grads_at(&model, &fixture, step);
        model = Optimizer::step(&mut optim, scheduler.step(), model, grads);
        assert_same_values(
            &values(&model),
            &reference[step - 1],
            &format!("step {step}"),
        );
    }
}

#[test]
fn a_record_that_does_not_fit_is_an_error_from_try_load_record() {
    let fixture = tensors("clipping.safetensors");
    let model = tiny(&fixture, "init");
    let optim = clipping_config().init(&model).unwrap();
    let mut record = Optimizer::to_record(&optim);
    record.params[3].shape = vec![6, 4];
    let err = clipping_config()
        .init(&model)
        .unwrap()
        .try_load_record(record)
        .err()
        .expect("a shape mismatch is an error");
    assert!(
        matches!(&err, LookaheadError::RecordMismatch { subject, .. }
            if subject == "textual.visual_projection.weight"),
        "{err}"
    );
}

#[test]
#[should_panic(expected = "cannot load the optimizer record")]
fn burn_load_record_panics_on_a_record_that_does_not_fit() {
    let fixture = tensors("clipping.safetensors");
    let model = tiny(&fixture, "init");
    let optim = clipping_config().init(&model).unwrap();
    let mut record = Optimizer::to_record(&optim);
    record.params.pop();
    let _ = Optimizer::load_record(clipping_config().init(&model).unwrap(), record);
}
