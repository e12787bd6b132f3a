//! `virtex eval-captions` and SPICE: skipped with a reason when there is no jar or no Java, an
//! error for a jar path that does not exist, and (on Unix, with shell scripts as `java`) how a
//! failing or succeeding child process shows in the command's output. No test runs the real
//! jar: CI machines have no Java.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

struct Inputs {
    directory: tempfile::TempDir,
    annotations: PathBuf,
    predictions: PathBuf,
}

/// Three COCO images (the ids of the SPICE output fixture), two predicted.
fn inputs() -> Inputs {
    let directory = tempfile::tempdir().unwrap();
    let annotations = directory.path().join("captions.json");
    let references = serde_json::json!({"annotations": [
        {"image_id": 139, "id": 1, "caption": "A woman stands in the dining area at the table."},
        {"image_id": 139, "id": 2, "caption": "A room with chairs, a table, and a woman in it."},
        {"image_id": 285, "id": 3, "caption": "A big brown bear sitting in the grass."},
        {"image_id": 632, "id": 4, "caption": "Bedroom scene with a bookcase, blue comforter."},
    ]});
    std::fs::write(&annotations, references.to_string()).unwrap();
    let predictions = directory.path().join("predictions.json");
    let list = serde_json::json!([
        {"image_id": 139, "caption": "A woman standing in a kitchen."},
        {"image_id": 285, "caption": "A brown bear in the grass."},
    ]);
    std::fs::write(&predictions, list.to_string()).unwrap();
    Inputs {
        directory,
        annotations,
        predictions,
    }
}

/// `virtex eval-captions` on `inputs` with `--per-image --out <dir>/scores.json`, without
/// `VIRTEX_SPICE_JAR` from the test's environment.
fn eval_captions(inputs: &Inputs, extra: &[&str], env: &[(&str, &Path)]) -> (Output, PathBuf) {
    let out = inputs.directory.path().join("scores.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_virtex"));
    command
        .arg("eval-captions")
        .arg("--predictions")
        .arg(&inputs.predictions)
        .arg("--annotations")
        .arg(&inputs.annotations)
        .arg("--per-image")
        .arg("--out")
        .arg(&out)
        .args(extra)
        .env_remove("VIRTEX_SPICE_JAR");
    for (name, value) in env {
        command.env(name, value);
    }
    (command.output().unwrap(), out)
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn read_report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// An empty file named like the jar (only its existence is checked before Java runs).
fn dummy_jar(root: &Path) -> PathBuf {
    let directory = root.join("spice");
    std::fs::create_dir_all(&directory).unwrap();
    let jar = directory.join("spice-1.0.jar");
    std::fs::write(&jar, b"").unwrap();
    jar
}

#[test]
fn without_a_jar_spice_is_skipped_with_the_reason() {
    let inputs = inputs();
    let (output, out) = eval_captions(&inputs, &[], &[]);
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    let reason = "no SPICE jar given (pass --spice-jar or set VIRTEX_SPICE_JAR)";
    assert!(
        stderr.contains(&format!("SPICE skipped: {reason}")),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("CIDEr-D") && !stdout.contains("SPICE"),
        "{stdout}"
    );

    let report = read_report(&out);
    assert!(report["spice"].is_null(), "{report}");
    assert_eq!(report.get("spice").map(Value::is_null), Some(true));
    assert_eq!(report["spice_skipped"], reason);
    // Everything else as before.
    for field in [
        "CIDEr",
        "Bleu_1",
        "Bleu_2",
        "Bleu_3",
        "Bleu_4",
        "CIDEr_x100",
    ] {
        assert!(report[field].is_f64(), "{field}: {report}");
    }
    assert_eq!(report["images"], 3);
    assert_eq!(report["missing_predictions"], 1);
    let per_image = report["per_image"].as_array().unwrap();
    assert_eq!(per_image.len(), 3);
    assert!(
        per_image
            .iter()
            .all(|image| image.get("spice").is_none() && image["cider"].is_f64()),
        "{report}"
    );
}

#[test]
fn without_java_spice_is_skipped_with_the_reason() {
    let inputs = inputs();
    let jar = dummy_jar(inputs.directory.path());
    let empty_bin = inputs.directory.path().join("empty-bin");
    std::fs::create_dir_all(&empty_bin).unwrap();
    let no_jdk = inputs.directory.path().join("no-jdk");
    let (output, out) = eval_captions(
        &inputs,
        &[],
        &[
            ("VIRTEX_SPICE_JAR", &jar),
            ("JAVA_HOME", &no_jdk),
            ("PATH", &empty_bin),
        ],
    );
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("SPICE skipped: no Java found:")
            && stderr.contains(&no_jdk.join("bin").display().to_string()),
        "{stderr}"
    );
    let report = read_report(&out);
    assert!(report["spice"].is_null());
    assert!(
        report["spice_skipped"]
            .as_str()
            .unwrap()
            .starts_with("no Java found:"),
        "{report}"
    );
}

/// Decision: a jar path that was given but does not exist is an error (a typo must not
/// silently drop a metric), before any scoring, naming the path and where it came from.
#[test]
fn a_missing_jar_path_is_an_error_naming_it() {
    let inputs = inputs();
    let missing = inputs.directory.path().join("nowhere/spice-1.0.jar");
    let (output, out) = eval_captions(&inputs, &["--spice-jar", missing.to_str().unwrap()], &[]);
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("(--spice-jar)"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing was scored");
    assert!(!out.exists());

    let (output, out) = eval_captions(&inputs, &[], &[("VIRTEX_SPICE_JAR", &missing)]);
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&missing.display().to_string())
            && stderr.contains("(VIRTEX_SPICE_JAR)")
            && stderr.contains("unset it"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// Shell scripts as `$JAVA_HOME/bin/java`: they test the command's handling of the child
/// process, not SPICE.
#[cfg(unix)]
mod process_boundary {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    use super::*;

    /// Writing an executable while another thread forks can leave the fork holding it open
    /// ("text file busy" on exec): the tests that write and run scripts take turns.
    static SCRIPTS: Mutex<()> = Mutex::new(());

    /// A fake JDK whose `bin/java` runs `body`.
    fn fake_jdk(root: &Path, body: &str) -> PathBuf {
        let home = root.join("jdk");
        std::fs::create_dir_all(home.join("bin")).unwrap();
        let java = home.join("bin/java");
        std::fs::write(&java, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&java, std::fs::Permissions::from_mode(0o755)).unwrap();
        home
    }

    #[test]
    fn process_boundary_a_failing_java_fails_the_command_with_its_stderr() {
        let _turn = SCRIPTS.lock().unwrap_or_else(|e| e.into_inner());
        let inputs = inputs();
        let jar = dummy_jar(inputs.directory.path());
        let home = fake_jdk(
            inputs.directory.path(),
            "echo 'Error: Could not score batched file input:' >&2\n\
             echo 'java.lang.NullPointerException' >&2\n\
             exit 1",
        );
        let (output, out) = eval_captions(
            &inputs,
            &["--spice-jar", jar.to_str().unwrap()],
            &[("JAVA_HOME", &home)],
        );
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains("SPICE failed")
                && stderr.contains(&home.join("bin/java").display().to_string())
                && stderr.contains("exit status: 1")
                && stderr.contains("java.lang.NullPointerException"),
            "{stderr}"
        );
        // The other metrics were printed before SPICE ran; no report is written.
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("CIDEr-D"), "{stdout}");
        assert!(!out.exists());
    }

    /// The script copies the hand-written output fixture of `virtex-eval` to `-out`: the
    /// command prints and reports what the child wrote (plumbing, not SPICE).
    #[test]
    fn process_boundary_the_report_carries_what_the_child_wrote() {
        let _turn = SCRIPTS.lock().unwrap_or_else(|e| e.into_inner());
        let inputs = inputs();
        let jar = dummy_jar(inputs.directory.path());
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../virtex-eval/tests/fixtures/spice_output.json");
        let home = fake_jdk(
            inputs.directory.path(),
            &format!(
                "while [ $# -gt 0 ]; do\n\
                   if [ \"$1\" = -out ]; then cp '{}' \"$2\"; fi\n\
                   shift\n\
                 done",
                fixture.display()
            ),
        );
        let cache = inputs.directory.path().join("spice-cache");
        let (output, out) = eval_captions(
            &inputs,
            &[
                "--spice-jar",
                jar.to_str().unwrap(),
                "--spice-cache",
                cache.to_str().unwrap(),
            ],
            &[("JAVA_HOME", &home)],
        );
        let stderr = stderr_of(&output);
        assert!(output.status.success(), "{stderr}");
        assert!(!stderr.contains("SPICE skipped"), "{stderr}");
        assert!(cache.is_dir());
        let stdout = String::from_utf8_lossy(&output.stdout);
        // The fixture's mean All.f is 43/171 = 0.25146…
        assert!(stdout.contains("SPICE 25.15"), "{stdout}");

        let report = read_report(&out);
        let spice = report["spice"].as_f64().unwrap();
        assert!((spice - 43.0 / 171.0).abs() < 1e-15, "{report}");
        assert!(report.get("spice_skipped").is_none(), "{report}");
        let per_image: Vec<(i64, f64)> = report["per_image"]
            .as_array()
            .unwrap()
            .iter()
            .map(|image| {
                (
                    image["image_id"].as_i64().unwrap(),
                    image["spice"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(per_image, [(139, 8.0 / 19.0), (285, 1.0 / 3.0), (632, 0.0)]);
    }
}
