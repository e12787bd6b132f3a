//! Resume is exact, a checkpoint survives `kill -9` at any moment, and the other run modes
//! (forward-only models, `--init-from`, `--eval-only`, `--export-backbone`, divergence stop).

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use virtex::{CaptioningModel, Precision};
use virtex_train::checkpoint::latest_checkpoint;
use virtex_train::metrics::MetricsLog;
use virtex_train::PretrainConfig;
use virtex_train::TrainError;
use virtex_train::{
    evaluate, load_model, run_config, ModelSource, PretextModel, ResumeOverrides, RunOptions,
    RunSummary,
};

use common::{exclusive, tiny_config};

type B = Autodiff<Flex>;

fn options(
    config: PretrainConfig,
    run_dir: &Path,
    resume: bool,
    stop_after: Option<u64>,
) -> RunOptions {
    RunOptions {
        resume,
        stop_after,
        ..RunOptions::new(config, run_dir)
    }
}

fn train(options: RunOptions) -> RunSummary {
    train_any(options).unwrap()
}

#[test]
fn n_plus_resume_plus_n_equals_2n() {
    let _exclusive = exclusive();
    let straight_dir = tempfile::tempdir().unwrap();
    let split_dir = tempfile::tempdir().unwrap();
    let config = tiny_config(6, 3);

    let straight = train(options(config.clone(), straight_dir.path(), false, None));
    let first = train(options(config.clone(), split_dir.path(), false, Some(3)));
    assert_eq!(first.iteration, 3);
    let second = train(options(config, split_dir.path(), true, None));
    assert_eq!(second.iteration, 6);

    let resumed: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(resumed, straight.losses, "loss trajectories differ");

    // Final parameters (and BatchNorm statistics, optimizer state) are identical.
    let read =
        |dir: &Path| std::fs::read(dir.join("checkpoint_00000006/model.safetensors")).unwrap();
    let (a, b) = (read(straight_dir.path()), read(split_dir.path()));
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let mut names = a.names();
    names.sort();
    assert!(names.len() > 100);
    for name in names {
        assert!(
            a.tensor(name).unwrap().data() == b.tensor(name).unwrap().data(),
            "{name} differs after resume"
        );
    }
    // The optimizer files hold random parameter ids and cannot be compared byte for byte; the
    // equal parameters above already prove the restored state: iterations 4–6 ran on the
    // restored momentum buffers, and iteration 5 is a Lookahead sync (k = 5) that reads the
    // restored slow weights and counter.
    // metrics.jsonl of the resumed run has one line per iteration, no duplicates.
    let lines = std::fs::read_to_string(split_dir.path().join("metrics.jsonl")).unwrap();
    let train_lines = lines.lines().filter(|l| l.contains("\"train\"")).count();
    assert_eq!(train_lines, 6);
}

#[test]
fn eval_only_init_from_and_backbone_export() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let config = tiny_config(3, 3);
    let summary = train(options(config.clone(), run_dir.path(), false, None));
    assert_eq!(summary.iteration, 3);
    assert!(summary.last_val.is_some());

    // The finished run exports the CNN with torchvision names, loadable by virtex-backbone.
    let mut backbone = virtex_backbone::ResNetConfig::resnet18().init::<Flex>(&Default::default());
    let report = backbone
        .load_weights(run_dir.path().join("backbone.safetensors"))
        .unwrap();
    assert_eq!(report.applied, backbone.num_tensors());

    // Evaluating the checkpoint file (`--init-from FILE --eval-only`) gives the same validation
    // loss as the run's end, with a batch size larger than the training split: evaluation
    // reads no training batch.
    let mut evaluation_config = config;
    evaluation_config.optim.batch_size = 64;
    let checkpoint =
        ModelSource::File(run_dir.path().join("checkpoint_00000003/model.safetensors"));
    let device = Default::default();
    let (model, evaluation_config, _) = load_model::<Flex, CaptioningModel<Flex>>(
        &checkpoint,
        evaluation_config,
        &ResumeOverrides::default(),
        &device,
    )
    .unwrap();
    let evaluated = evaluate(&model, &evaluation_config, &device).unwrap();
    assert_eq!(Some(evaluated), summary.last_val);
}

/// A forward-only (`captioning`) run resumes as that model: `train` takes the model type from
/// the checkpoint's config, not from the (default, bicaptioning) config of the command line.
#[test]
fn a_forward_only_run_resumes_exactly_as_its_own_model() {
    let _exclusive = exclusive();
    let mut config = tiny_config(4, 2);
    config.model.name = "captioning".into();
    let straight_dir = tempfile::tempdir().unwrap();
    let split_dir = tempfile::tempdir().unwrap();
    let straight = train_any(options(config.clone(), straight_dir.path(), false, None)).unwrap();
    let first = train_any(options(config, split_dir.path(), false, Some(2))).unwrap();

    // What `main` passes on `--resume`: the default preset, plus the data flags.
    let sample = virtex_data::sample_data_root();
    let mut resume = options(
        PretrainConfig::preset("small_cpu").unwrap(),
        split_dir.path(),
        true,
        None,
    );
    resume.resume_overrides = ResumeOverrides {
        data_root: Some(sample.clone()),
        tokenizer: Some(virtex_data::sample_vocab_path()),
        precision: Some(Precision::F32),
    };
    let resolved = run_config(&resume).unwrap();
    assert_eq!(resolved.model.name, "captioning");
    assert_eq!(resolved.optim.num_iterations, 4);
    assert_eq!(resolved.data.root, Some(sample));
    let second = train_any(resume).unwrap();

    assert_eq!(second.iteration, 4);
    let resumed: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    assert_eq!(resumed, straight.losses);
    // The forward model has no backward head: only the forward component is logged.
    let (records, _) = MetricsLog::read(split_dir.path()).unwrap();
    assert!(records
        .iter()
        .all(|r| r.component("captioning_backward").is_none()
            && r.component("captioning_forward") == Some(r.loss)));
}

/// `--export-backbone` from the newest checkpoint of a stopped run; a new run over a run's
/// checkpoints is refused; `--init-from` checks the architecture.
#[test]
fn export_eval_and_init_from_check_their_inputs() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let config = tiny_config(6, 2);
    let stopped = train(options(config.clone(), run_dir.path(), false, Some(2)));
    assert_eq!(stopped.iteration, 2);
    assert!(!run_dir.path().join("backbone.safetensors").exists());

    // `--resume RUN --export-backbone FILE`: the newest checkpoint's model and config.
    let exported = run_dir.path().join("exported.safetensors");
    let (model, _, iteration) = load_model::<Flex, CaptioningModel<Flex>>(
        &ModelSource::Run(run_dir.path().to_path_buf()),
        PretrainConfig::preset("small_cpu").unwrap(),
        &ResumeOverrides::default(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(iteration, 2);
    model.export_backbone(&exported).unwrap();
    let mut backbone = virtex_backbone::ResNetConfig::resnet18().init::<Flex>(&Default::default());
    let report = backbone.load_weights(&exported).unwrap();
    assert_eq!(report.applied, backbone.num_tensors());
    // Exporting trained nothing: the run still ends at its checkpoint.
    assert_eq!(latest_checkpoint(run_dir.path()).unwrap().unwrap().0, 2);

    // A new run over the stopped run's checkpoints is refused.
    let err = train_any(options(config.clone(), run_dir.path(), false, None)).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    // Without checkpoints (an earlier run killed before its first) its log is still another
    // run's result: refused too, and left as it was.
    let early = tempfile::tempdir().unwrap();
    std::fs::copy(
        run_dir.path().join("metrics.jsonl"),
        early.path().join("metrics.jsonl"),
    )
    .unwrap();
    let log = std::fs::read(early.path().join("metrics.jsonl")).unwrap();
    let err = train_any(options(config.clone(), early.path(), false, Some(1))).unwrap_err();
    assert!(
        matches!(&err, TrainError::RunDirHoldsResults { found, .. } if found == &["metrics.jsonl"]),
        "{err}"
    );
    assert_eq!(
        std::fs::read(early.path().join("metrics.jsonl")).unwrap(),
        log
    );

    let elsewhere = tempfile::tempdir().unwrap();

    // Another head than the checkpoint's (same shapes, other head count): the key is named.
    let mut other_heads = config;
    other_heads.model.textual = "transdec_postnorm::L1_H64_A2_F256".into();
    let mut init = options(other_heads, elsewhere.path(), false, None);
    init.init_from = Some(run_dir.path().join("checkpoint_00000002/model.safetensors"));
    let err = train_any(init).unwrap_err();
    assert!(
        matches!(&err, TrainError::Model(virtex::VirtexError::ArchitectureMismatch { key, .. }) if key == "textual.attention_heads")
            && err
                .to_string()
                .contains("`textual.attention_heads` is 1 in the file, 2"),
        "{err}"
    );
}

/// Non-finite steps are skipped and counted; `train.max_consecutive_skips` of them in a row
/// stop the run with a checkpoint, and the log (with its NaNs) still reads and plots.
#[test]
fn a_diverging_run_stops_with_a_checkpoint() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(20, 100);
    config.optim.warmup_steps = 0;
    // Finite (the optimizer refuses others) but large enough to overflow f32 activations.
    config.optim.cnn_lr = 1e38;
    config.optim.lr = 1e38;
    config.train.max_consecutive_skips = 2;
    // The stopping iteration is logged even off the logging period.
    config.train.log_every = 100;
    let err = train_any(options(config, run_dir.path(), false, None)).unwrap_err();
    let TrainError::Diverged {
        count, checkpoint, ..
    } = &err
    else {
        panic!("expected a divergence stop, got {err}");
    };
    assert_eq!(*count, 2);
    assert!(checkpoint.join("state.json").is_file(), "{err}");
    let (records, _) = MetricsLog::read(run_dir.path()).unwrap();
    assert!(records.iter().any(|r| !r.loss.is_finite()));
    assert_eq!(records.last().unwrap().skipped_steps, 2);
    assert!(run_dir.path().join("loss.png").is_file());
}

/// `data.vocab_size` must be the tokenizer's (upstream `VOCAB_SIZE`).
#[test]
fn a_vocabulary_size_that_is_not_the_tokenizers_is_refused() {
    let _exclusive = exclusive();
    let run_dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(3, 3);
    config.data.vocab_size = 10_000;
    let err = train_any(options(config, run_dir.path(), false, None)).unwrap_err();
    assert!(
        err.to_string().contains("data.vocab_size is 10000"),
        "{err}"
    );
    assert!(err.to_string().contains("400"), "{err}");
}

fn train_any(options: RunOptions) -> Result<RunSummary, TrainError> {
    virtex_train::train::<B>(
        options,
        vec![Default::default()],
        Arc::new(AtomicBool::new(false)),
    )
}
