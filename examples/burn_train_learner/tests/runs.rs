//! The example's training, run for a few iterations as CI runs it.

use burn_train_learner::{train, LearnerError, ProgressDisplay};

#[test]
fn a_few_iterations_train_validate_and_write_burn_train_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("run");

    let report = train(3, &artifacts, ProgressDisplay::Plain).unwrap();

    // Upstream's loss at initialisation is ≈ 2 ln(vocabulary) = 2 ln 400 ≈ 12 (two heads).
    for loss in [report.train_loss, report.valid_loss] {
        assert!(loss.is_finite() && loss > 0.0 && loss < 30.0, "{report:?}");
    }
    // burn-train's checkpointer (model, optimizer, scheduler of epoch 1) and metric logs.
    for file in [
        "checkpoint/model-1.mpk",
        "checkpoint/optim-1.mpk",
        "checkpoint/scheduler-1.mpk",
        "train/epoch-1/Loss.log",
        "valid/epoch-1/Loss.log",
        "experiment.log",
    ] {
        let path = artifacts.join(file);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "burn-train did not write {}", path.display());
    }
    let train_log = std::fs::read_to_string(artifacts.join("train/epoch-1/Loss.log")).unwrap();
    assert_eq!(
        train_log.lines().count(),
        3,
        "one loss per iteration:\n{train_log}"
    );

    // A second run into the same directory would mix its logs with these.
    let again = train(1, &artifacts, ProgressDisplay::Plain).unwrap_err();
    assert!(
        matches!(again, LearnerError::ArtifactDirNotEmpty(_)),
        "{again}"
    );
}
