//! `virtex eval-voc07 --run RUN`: the VOC07 mAP of every checkpoint of a training run, on
//! run directories laid out as `pretrain_coco` writes them, holding tiny captioning models, and
//! the tiny VOC-layout fixture of `virtex-eval`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use virtex::backbone::ResNetConfig;
use virtex::textual::TextualHeadConfig;
use virtex::CaptioningModelConfig;
use virtex_cli::{EvalVoc07Args, DEFAULT_IMAGE_CACHE_MIB};
use virtex_device::DeviceSpec;

type B = virtex_device::CpuBackend;

fn voc_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../virtex-eval/tests/fixtures/voc07_tiny")
}

fn virtex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtex"))
}

/// A run directory as `pretrain_coco` starts one.
fn new_run() -> tempfile::TempDir {
    let run = tempfile::tempdir().unwrap();
    fs::write(run.path().join("config.json"), "{}\n").unwrap();
    fs::write(run.path().join("metrics.jsonl"), "").unwrap();
    run
}

/// Writes `checkpoint_{iteration:08}/` as the trainer does (a temporary directory renamed into
/// place), holding a fresh random captioning model whose ResNet-18 layout has `stem` channels.
fn add_checkpoint(run: &Path, iteration: u64, stem: usize) -> PathBuf {
    let backbone = ResNetConfig::resnet18()
        .with_stem_channels(stem)
        .with_zero_init_residual(false);
    let textual =
        TextualHeadConfig::from_name("transdec_postnorm::L1_H32_A2_F64", stem * 8, 50).unwrap();
    let model = CaptioningModelConfig::new(backbone, textual)
        .init::<B>(&Default::default())
        .unwrap();
    let temporary = run.join(format!(".partial-checkpoint_{iteration:08}"));
    fs::create_dir(&temporary).unwrap();
    model.save(temporary.join("model.safetensors")).unwrap();
    fs::write(temporary.join("optimizer.mpk"), b"optimizer").unwrap();
    fs::write(
        temporary.join("state.json"),
        format!("{{\"iteration\": {iteration}}}"),
    )
    .unwrap();
    let checkpoint = run.join(format!("checkpoint_{iteration:08}"));
    fs::rename(&temporary, &checkpoint).unwrap();
    checkpoint
}

fn sweep_args(run: &Path) -> EvalVoc07Args {
    EvalVoc07Args {
        weights: None,
        run: Some(run.to_path_buf()),
        watch: None,
        image_cache_mib: DEFAULT_IMAGE_CACHE_MIB,
        weights_format: None,
        voc_root: voc_root(),
        arch: "resnet50".into(),
        train_split: "trainval".into(),
        test_split: "test".into(),
        short_side: 32,
        crop: 32,
        batch_size: 8,
        device: DeviceSpec::Cpu,
        max_image_pixels: None,
        seed: virtex_eval::SKLEARN_RANDOM_STATE_0_SEED,
        out: None,
    }
}

/// The sweep's command line for `run`, as [`sweep_args`].
fn sweep_command(run: &Path) -> Command {
    let mut command = virtex();
    command
        .arg("eval-voc07")
        .arg("--run")
        .arg(run)
        .arg("--voc-root")
        .arg(voc_root())
        .args(["--short-side", "32", "--crop", "32", "--batch-size", "8"]);
    command
}

fn records(run: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(run.join("voc07.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn best(run: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(run.join("voc07_best.json")).unwrap()).unwrap()
}

fn modified(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

fn iterations(records: &[serde_json::Value]) -> Vec<u64> {
    records
        .iter()
        .map(|record| record["iteration"].as_u64().unwrap())
        .collect()
}

/// Checks every record and that `voc07_best.json` names the highest mAP.
fn check_records_and_best(run: &Path) -> Vec<serde_json::Value> {
    let records = records(run);
    for record in &records {
        let map = record["map"].as_f64().unwrap();
        assert!(map.is_finite() && (0.0..=100.0).contains(&map), "{record}");
        let iteration = record["iteration"].as_u64().unwrap();
        assert_eq!(record["checkpoint"], format!("checkpoint_{iteration:08}"));
        let per_class = record["per_class"].as_object().unwrap();
        assert_eq!(
            per_class.keys().collect::<Vec<_>>(),
            ["aeroplane", "cat", "person"]
        );
        let mean = per_class
            .values()
            .map(|ap| ap.as_f64().unwrap())
            .sum::<f64>()
            / 3.0;
        // Both rounded to 6 decimals.
        assert!((mean - map).abs() < 1e-5, "{record}");
        assert!(record["seconds"].as_f64().unwrap() >= 0.0);
        assert!(record["settings"]["crop"].is_u64(), "{record}");
    }
    let highest = records
        .iter()
        .map(|record| record["map"].as_f64().unwrap())
        .fold(f64::NEG_INFINITY, f64::max);
    let best = best(run);
    assert_eq!(best["map"].as_f64().unwrap(), highest);
    assert_eq!(best["evaluated"], records.len());
    let named = records
        .iter()
        .find(|record| record["iteration"] == best["iteration"])
        .unwrap();
    assert_eq!(named["checkpoint"], best["checkpoint"]);
    assert_eq!(named["map"], best["map"]);
    records
}

#[test]
fn a_sweep_records_each_checkpoint_once_and_marks_the_best() {
    let run = new_run();
    add_checkpoint(run.path(), 200, 8);
    add_checkpoint(run.path(), 100, 4);
    add_checkpoint(run.path(), 300, 16);
    sweep_args(run.path()).run().unwrap();
    let first = check_records_and_best(run.path());
    assert_eq!(iterations(&first), [100, 200, 300]);
    let maps: Vec<f64> = first.iter().map(|r| r["map"].as_f64().unwrap()).collect();
    assert!(
        maps.windows(2).any(|pair| pair[0] != pair[1]),
        "the backbones differ, so should their mAPs: {maps:?}"
    );

    // Nothing new: nothing evaluated, nothing written.
    let records_path = run.path().join("voc07.jsonl");
    let best_path = run.path().join("voc07_best.json");
    let before = (
        fs::read(&records_path).unwrap(),
        modified(&records_path),
        modified(&best_path),
    );
    std::thread::sleep(Duration::from_millis(20));
    let output = sweep_command(run.path()).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nothing to evaluate"), "{stderr}");
    let after = (
        fs::read(&records_path).unwrap(),
        modified(&records_path),
        modified(&best_path),
    );
    assert_eq!(before, after, "{stderr}");
    // The table: every checkpoint, the best marked.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let best_iteration = best(run.path())["iteration"].as_u64().unwrap();
    for iteration in [100u64, 200, 300] {
        let row = stdout
            .lines()
            .find(|line| line.contains(&format!("checkpoint_{iteration:08}")))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert_eq!(row.ends_with('*'), iteration == best_iteration, "{stdout}");
    }

    // A new checkpoint: only it is evaluated, the old lines stay as they were.
    add_checkpoint(run.path(), 400, 4);
    sweep_args(run.path()).run().unwrap();
    let second = check_records_and_best(run.path());
    assert_eq!(iterations(&second), [100, 200, 300, 400]);
    assert_eq!(second[..3], first[..]);
    let whole = fs::read_to_string(&records_path).unwrap();
    assert!(whole.starts_with(&String::from_utf8(before.0).unwrap()));

    // A last line cut short (a killed sweep) is removed, and its checkpoint evaluated again.
    let cut = whole.len() - whole.lines().last().unwrap().len() / 2 - 1;
    fs::write(&records_path, &whole[..cut]).unwrap();
    let output = sweep_command(run.path()).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("incomplete last line") && stderr.contains("voc07.jsonl"),
        "{stderr}"
    );
    let repaired = check_records_and_best(run.path());
    assert_eq!(iterations(&repaired), [100, 200, 300, 400]);
    let (old, new) = (
        second[3]["map"].as_f64().unwrap(),
        repaired[3]["map"].as_f64().unwrap(),
    );
    assert!((old - new).abs() < 1e-6, "{old} then {new}");
}

#[test]
fn a_checkpoint_model_file_is_what_eval_voc07_weights_reads() {
    let run = new_run();
    let checkpoint = add_checkpoint(run.path(), 1000, 64);
    let mut args = sweep_args(run.path());
    args.image_cache_mib = 0;
    args.run().unwrap();
    let record = &check_records_and_best(run.path())[0];

    let out = run.path().join("single.json");
    let mut single = sweep_args(run.path());
    single.run = None;
    single.weights = Some(checkpoint.join("model.safetensors"));
    single.arch = "resnet18".into();
    single.out = Some(out.clone());
    single.run().unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["feature_dim"], 512);
    let (swept, alone) = (
        record["map"].as_f64().unwrap(),
        report["map"].as_f64().unwrap(),
    );
    // The record is rounded to 6 decimals.
    assert!((swept - alone).abs() < 1e-6, "{swept} vs {alone}");
}

#[test]
fn removed_checkpoints_are_skipped_with_a_message() {
    let run = new_run();
    add_checkpoint(run.path(), 100, 4);
    sweep_args(run.path()).run().unwrap();
    // Being removed by keep_last: `state.json` still there, `model.safetensors` gone.
    let going = add_checkpoint(run.path(), 200, 4);
    fs::remove_file(going.join("model.safetensors")).unwrap();
    add_checkpoint(run.path(), 300, 4);
    // Evaluated before, removed since: it stays in the records.
    fs::remove_dir_all(run.path().join("checkpoint_00000100")).unwrap();

    let output = sweep_command(run.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipping checkpoint_00000200") && stderr.contains("keep_last"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout
            .lines()
            .any(|line| line.contains("checkpoint_00000100") && line.contains("(removed)")),
        "{stdout}"
    );
    let records = check_records_and_best(run.path());
    assert_eq!(iterations(&records), [100, 300]);
}

#[test]
fn an_unreadable_checkpoint_is_an_error_naming_it() {
    let run = new_run();
    let checkpoint = add_checkpoint(run.path(), 100, 4);
    fs::write(checkpoint.join("model.safetensors"), b"not a model").unwrap();
    let output = sweep_command(run.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("checkpoint_00000100") && stderr.contains("model.safetensors"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(run.path().join("voc07.jsonl")).unwrap(),
        ""
    );
    assert!(!run.path().join("voc07_best.json").exists());
}

#[test]
fn run_must_name_a_training_run_and_excludes_weights() {
    let directory = tempfile::tempdir().unwrap();
    let failing = |command: &mut Command| {
        let output = command.output().unwrap();
        assert!(!output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };

    let empty = directory.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let stderr = failing(&mut sweep_command(&empty));
    assert!(
        stderr.contains("not a training run directory")
            && stderr.contains("empty")
            && stderr.contains("config.json"),
        "{stderr}"
    );
    assert!(
        fs::read_dir(&empty).unwrap().next().is_none(),
        "wrote into it"
    );

    let missing = directory.path().join("missing");
    let stderr = failing(&mut sweep_command(&missing));
    assert!(
        stderr.contains("missing") && stderr.contains("does not exist"),
        "{stderr}"
    );

    let run = new_run();
    let checkpoint = add_checkpoint(run.path(), 100, 4);
    let stderr = failing(&mut sweep_command(&checkpoint));
    assert!(
        stderr.contains("it is a checkpoint") && stderr.contains("--weights"),
        "{stderr}"
    );

    let weights = checkpoint.join("model.safetensors");
    let stderr = failing(sweep_command(run.path()).arg("--weights").arg(&weights));
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    let stderr = failing(
        virtex()
            .args(["eval-voc07", "--watch", "--voc-root"])
            .arg(voc_root())
            .arg("--weights")
            .arg(&weights),
    );
    assert!(
        stderr.contains("--watch") && stderr.contains("--run"),
        "{stderr}"
    );
    let stderr = failing(virtex().args(["eval-voc07", "--voc-root"]).arg(voc_root()));
    assert!(
        stderr.contains("--weights") && stderr.contains("--run"),
        "{stderr}"
    );

    // A bad VOC root is named, and nothing is written into the run.
    let stderr = failing(
        virtex()
            .args(["eval-voc07", "--run"])
            .arg(run.path())
            .arg("--voc-root")
            .arg(directory.path().join("nowhere")),
    );
    assert!(stderr.contains("nowhere"), "{stderr}");
    assert!(!run.path().join("voc07.jsonl").exists());
}

/// Waits (at most a minute) until `RUN/voc07.jsonl` holds `lines` lines.
fn wait_for_records(run: &Path, lines: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = fs::read_to_string(run.join("voc07.jsonl"))
            .map(|text| text.lines().count())
            .unwrap_or(0);
        if count >= lines {
            return;
        }
        assert!(Instant::now() < deadline, "{count} of {lines} records");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_follows_a_run_until_its_trainer_releases_the_lock() {
    // A finished run (its lock file left, not held): evaluate and return.
    let run = new_run();
    fs::write(run.path().join(".lock"), "12345").unwrap();
    add_checkpoint(run.path(), 100, 4);
    let mut args = sweep_args(run.path());
    args.watch = Some(1);
    args.run().unwrap();
    assert_eq!(iterations(&check_records_and_best(run.path())), [100]);

    // A running one: new checkpoints are evaluated as they appear, until the lock goes.
    let run = new_run();
    let lock = File::create(run.path().join(".lock")).unwrap();
    lock.lock().unwrap();
    add_checkpoint(run.path(), 100, 4);
    let watcher = {
        let mut args = sweep_args(run.path());
        args.watch = Some(1);
        std::thread::spawn(move || args.run())
    };
    wait_for_records(run.path(), 1);
    add_checkpoint(run.path(), 200, 8);
    wait_for_records(run.path(), 2);
    assert!(
        !watcher.is_finished(),
        "returned while the trainer held the lock"
    );
    // The trainer's last checkpoint, then its exit.
    add_checkpoint(run.path(), 300, 4);
    drop(lock);
    watcher.join().unwrap().unwrap();
    assert_eq!(
        iterations(&check_records_and_best(run.path())),
        [100, 200, 300]
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_a_watching_sweep_cleanly() {
    let run = new_run();
    let lock = File::create(run.path().join(".lock")).unwrap();
    lock.lock().unwrap();
    add_checkpoint(run.path(), 100, 4);
    let mut child = sweep_command(run.path())
        .args(["--watch", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = received
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no `waiting` message: {seen:?}"));
        let waiting = line.contains("waiting for new checkpoints");
        seen.push(line);
        if waiting {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    seen.extend(received.try_iter());
    assert!(status.success(), "{status:?}: {seen:?}");
    assert!(
        seen.iter().any(|line| line.contains("interrupted")),
        "{seen:?}"
    );
    assert_eq!(iterations(&check_records_and_best(run.path())), [100]);
    drop(lock);
}

#[test]
fn images_kept_between_checkpoints_give_the_same_results() {
    let run = new_run();
    for (iteration, stem) in [(100, 4), (200, 8), (300, 4)] {
        add_checkpoint(run.path(), iteration, stem);
    }
    let maps = |image_cache_mib: usize| {
        let mut args = sweep_args(run.path());
        // 48 KiB an image, 384 KiB a batch: 1 MiB keeps two of the five batches.
        (args.short_side, args.crop) = (64, 64);
        args.image_cache_mib = image_cache_mib;
        args.run().unwrap();
        let maps: Vec<f64> = check_records_and_best(run.path())
            .iter()
            .map(|record| record["map"].as_f64().unwrap())
            .collect();
        fs::remove_file(run.path().join("voc07.jsonl")).unwrap();
        fs::remove_file(run.path().join("voc07_best.json")).unwrap();
        maps
    };
    let decoded_each_time = maps(0);
    for image_cache_mib in [1, DEFAULT_IMAGE_CACHE_MIB] {
        let kept = maps(image_cache_mib);
        assert_eq!(kept.len(), 3);
        for (kept, decoded) in kept.iter().zip(&decoded_each_time) {
            assert!((kept - decoded).abs() < 1e-9, "{kept} vs {decoded}");
        }
    }
}
