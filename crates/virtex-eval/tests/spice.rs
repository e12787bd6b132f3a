//! SPICE around the jar: the input file we write, the output we parse, availability, and (on
//! Unix) our handling of the child process. No test runs the real jar: CI machines have no
//! Java and no network, so the jar's side is fixed by its source (`SpiceScorer.java`,
//! `SpiceStats.java`, `Evaluation.java` of SPICE 1.0) and pycocoevalcap's `spice.py`.

use std::path::{Path, PathBuf};

use virtex_eval::{
    find_java, parse_spice_output, read_spice_output, spice_availability_in, spice_entries,
    spice_input_json, write_spice_input, EvalError, ImageId, JarOrigin, SpiceEntry,
    SpiceEnvironment, SpiceUnavailable,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

type Predictions = Vec<(ImageId, String)>;
type GroundTruth = Vec<(ImageId, Vec<String>)>;

/// A small evaluation: ids in first-appearance order, one string id, one image without a
/// prediction, one prediction outside the ground truth, punctuation, case and non-ASCII.
fn small_set() -> (Predictions, GroundTruth) {
    let ground_truth = vec![
        (
            ImageId::Int(285),
            strings(&[
                "A big brown bear sitting in the grass.",
                "The bear is resting, on a lawn!",
            ]),
        ),
        (
            ImageId::Int(139),
            strings(&[
                "A woman stands in the dining area at the table.",
                "A room with chairs, a table, and a woman in it.",
            ]),
        ),
        (
            ImageId::Str("beach_photo".into()),
            strings(&["Two people walking on the beach."]),
        ),
        (
            ImageId::Int(632),
            strings(&["A café with crème brûlée on the menu."]),
        ),
    ];
    let predictions = vec![
        (ImageId::Int(139), "A woman in a kitchen, standing.".into()),
        (ImageId::Int(999), "Not in the ground truth.".into()),
        (ImageId::Int(285), "a bear in the GRASS".into()),
        (
            ImageId::Str("beach_photo".into()),
            "Two people on a beach".into(),
        ),
    ];
    (predictions, ground_truth)
}

/// What pycocoevalcap's `json.dump(input_data, in_file, indent=2)` writes for `small_set`
/// after its PTBTokenizer: `image_id`, `test`, `refs` per image, Python's layout, non-ASCII
/// escaped (`ensure_ascii`), the missing prediction an empty `test`.
const EXPECTED_INPUT: &str = r#"[
  {
    "image_id": 285,
    "test": "a bear in the grass",
    "refs": [
      "a big brown bear sitting in the grass",
      "the bear is resting on a lawn"
    ]
  },
  {
    "image_id": 139,
    "test": "a woman in a kitchen standing",
    "refs": [
      "a woman stands in the dining area at the table",
      "a room with chairs a table and a woman in it"
    ]
  },
  {
    "image_id": "beach_photo",
    "test": "two people on a beach",
    "refs": [
      "two people walking on the beach"
    ]
  },
  {
    "image_id": 632,
    "test": "",
    "refs": [
      "a caf\u00e9 with cr\u00e8me br\u00fbl\u00e9e on the menu"
    ]
  }
]"#;

#[test]
fn input_file_has_pycocoevalcaps_structure_and_layout() {
    let (predictions, ground_truth) = small_set();
    let entries = spice_entries(&predictions, &ground_truth);
    assert_eq!(spice_input_json(&entries), EXPECTED_INPUT);

    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("input_file.json");
    write_spice_input(&path, &entries).unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, EXPECTED_INPUT);
    // What the jar reads back: the tokenised captions, unescaped.
    let parsed: Vec<SpiceEntry> = serde_json::from_str(&written).unwrap();
    assert_eq!(parsed, entries);
    assert_eq!(parsed[3].refs[0], "a café with crème brûlée on the menu");
}

#[test]
fn input_json_escapes_like_python_ensure_ascii() {
    let entries = vec![SpiceEntry {
        image_id: ImageId::Int(1),
        test: "a \"quoted\" dog \\ tab\there 😀 del\u{7f}".into(),
        refs: vec![],
    }];
    // json.dumps([{"image_id": 1, "test": "a \"quoted\" dog \\ tab\there \U0001F600 del\x7f",
    //              "refs": []}], indent=2)
    let expected = "[\n  {\n    \"image_id\": 1,\n    \"test\": \"a \\\"quoted\\\" dog \\\\ \
                    tab\\there \\ud83d\\ude00 del\\u007f\",\n    \"refs\": []\n  }\n]";
    assert_eq!(spice_input_json(&entries), expected);
}

/// `tests/fixtures/spice_output.json` is written by hand in the jar's output format:
/// `SpiceStats.toJSONArray` with `-subset` (categories All, Object, Attribute, Relation,
/// Cardinality, Color, Size), each `Evaluation.toJSONString` (`tp fp fn f pr re wtp wfp wfn wf
/// wpr wre`) in `java.util.HashMap` key order, pretty-printed by `JSON.stringify(…, null, 2)`,
/// so `NaN` is `null` and whole numbers have no decimals. Counts are consistent with
/// `Evaluation.calcFScore`: image 139 has tp 4, fp 2, fn 9 (pr 2/3, re 4/13, F 8/19); image 285
/// tp 2, fp 3, fn 5 (F 1/3); image 632 had an empty candidate (tp = fp = 0, F 0). Subset
/// categories without reference tuples are `null` (the jar scores them with `allowNan`).
#[test]
fn output_parser_averages_all_f_over_images() {
    let path = fixture("spice_output.json");
    let scores = read_spice_output(&path).unwrap();
    let ids: Vec<ImageId> = scores
        .per_image
        .iter()
        .map(|s| s.image_id.clone())
        .collect();
    assert_eq!(ids, [139, 285, 632].map(ImageId::Int));
    let all_f: Vec<f64> = scores.per_image.iter().map(|s| s.all.f).collect();
    assert_eq!(all_f, [8.0 / 19.0, 1.0 / 3.0, 0.0]);
    // (8/19 + 1/3 + 0) / 3 = 43/171.
    assert!(
        (scores.spice - 43.0 / 171.0).abs() < 1e-15,
        "{}",
        scores.spice
    );
    assert_eq!(scores.nan_images(), 0);

    let first = &scores.per_image[0];
    assert_eq!(first.all.pr, 2.0 / 3.0);
    assert_eq!(first.all.re, 4.0 / 13.0);
    let names: Vec<&str> = first.categories.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "Attribute",
            "Cardinality",
            "Color",
            "Object",
            "Relation",
            "Size"
        ]
    );
    // `null` (the jar's NaN) becomes NaN, as pycocoevalcap's `float_convert`; a subset NaN does
    // not touch the mean, which only reads All.f.
    let cardinality = first.categories["Cardinality"];
    assert!(cardinality.f.is_nan() && cardinality.pr.is_nan() && cardinality.re.is_nan());
    assert_eq!(first.categories["Attribute"].f, 0.0);
    assert_eq!(first.categories["Object"].f, 2.0 / 3.0);
    let empty = &scores.per_image[2];
    assert_eq!((empty.all.f, empty.all.pr, empty.all.re), (0.0, 0.0, 0.0));
}

#[test]
fn a_non_numeric_all_f_makes_the_mean_nan_as_np_mean() {
    let path = Path::new("output.json");
    let text = r#"[
      {"image_id": 1, "scores": {"All": {"f": 0.5, "pr": 0.5, "re": 0.5}}},
      {"image_id": 2, "scores": {"All": {"f": null, "pr": null, "re": null}}},
      {"image_id": 3, "scores": {"All": {"f": "0.25", "pr": 1, "re": 0}}}
    ]"#;
    let scores = parse_spice_output(text, path).unwrap();
    assert!(scores.spice.is_nan());
    assert_eq!(scores.nan_images(), 1);
    // float("0.25") is 0.25.
    assert_eq!(scores.per_image[2].all.f, 0.25);

    let numeric = r#"[{"image_id": "a", "scores": {"All": {"f": 0.5}}},
                      {"image_id": "b", "scores": {"All": {"f": "0.25"}}}]"#;
    let scores = parse_spice_output(numeric, path).unwrap();
    assert_eq!(scores.spice, 0.375);
    assert!(scores.per_image[0].all.pr.is_nan());
    assert_eq!(scores.per_image[1].image_id, ImageId::Str("b".into()));

    // np.mean([]) is NaN.
    assert!(parse_spice_output("[]", path).unwrap().spice.is_nan());
}

#[test]
fn unusable_output_is_an_error_naming_the_file() {
    let path = Path::new("/tmp/run/output_file.json");
    for (text, expected) in [
        ("not json", "not JSON"),
        (r#"{"image_id": 1}"#, "not a JSON list"),
        (
            r#"[{"scores": {"All": {"f": 1}}}]"#,
            "item 0: no `image_id`",
        ),
        (r#"[{"image_id": 1.5, "scores": {}}]"#, "`image_id` 1.5"),
        (r#"[{"image_id": 1}]"#, "no `scores` object"),
        (
            r#"[{"image_id": 1, "scores": {"Object": {}}}]"#,
            "no `scores.All` object",
        ),
        (
            r#"[{"image_id": 1, "scores": {"All": {"pr": 1}}}]"#,
            "no `scores.All.f`",
        ),
        (
            r#"[{"image_id": 1, "scores": {"All": {"f": 1}, "Color": 3}}]"#,
            "`scores.Color` is not an object",
        ),
    ] {
        let err = parse_spice_output(text, path).unwrap_err();
        assert!(matches!(err, EvalError::SpiceOutput { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("/tmp/run/output_file.json") && message.contains(expected),
            "{text}: {message}"
        );
    }
    let missing = read_spice_output(Path::new("/nonexistent/output_file.json")).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("/nonexistent/output_file.json"),
        "{missing}"
    );
}

/// A directory holding an (empty) file named `java` — `find_java` only looks for the file.
fn fake_java_dir(root: &Path, name: &str) -> PathBuf {
    let directory = root.join(name);
    std::fs::create_dir_all(&directory).unwrap();
    std::fs::write(
        directory.join(format!("java{}", std::env::consts::EXE_SUFFIX)),
        b"",
    )
    .unwrap();
    directory
}

#[test]
fn availability_says_why_spice_cannot_run() {
    let directory = tempfile::tempdir().unwrap();
    let jar = directory.path().join("spice-1.0.jar");
    std::fs::write(&jar, b"").unwrap();
    let nowhere = SpiceEnvironment::default();

    // No jar, from neither the argument nor the environment (an empty variable is unset).
    assert_eq!(
        spice_availability_in(None, &nowhere).unwrap_err(),
        SpiceUnavailable::NoJar
    );
    let empty = SpiceEnvironment {
        jar: Some("".into()),
        ..nowhere.clone()
    };
    assert_eq!(
        spice_availability_in(None, &empty).unwrap_err(),
        SpiceUnavailable::NoJar
    );

    // A jar path that does not exist is named, with where it came from, even without Java.
    let missing = directory.path().join("missing/spice-1.0.jar");
    let err = spice_availability_in(Some(&missing), &nowhere).unwrap_err();
    assert_eq!(
        err,
        SpiceUnavailable::JarNotFound {
            path: missing.clone(),
            origin: JarOrigin::Explicit
        }
    );
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    let from_env = SpiceEnvironment {
        jar: Some(missing.clone().into()),
        ..nowhere.clone()
    };
    let err = spice_availability_in(None, &from_env).unwrap_err();
    assert!(
        matches!(
            err,
            SpiceUnavailable::JarNotFound {
                origin: JarOrigin::Environment,
                ..
            }
        ) && err.to_string().contains("VIRTEX_SPICE_JAR"),
        "{err}"
    );

    // A jar but no Java.
    let err = spice_availability_in(Some(&jar), &nowhere).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no Java found: JAVA_HOME is not set and PATH is not set"
    );
    let bad_home = directory.path().join("no-jdk");
    let empty_path = directory.path().join("empty-bin");
    std::fs::create_dir_all(&empty_path).unwrap();
    let err = find_java(&SpiceEnvironment {
        java_home: Some(bad_home.clone().into()),
        path: Some(std::env::join_paths([&empty_path]).unwrap()),
        ..nowhere.clone()
    })
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&bad_home.join("bin").display().to_string())
            && message.contains("from JAVA_HOME")
            && message.contains("on PATH"),
        "{message}"
    );

    // Java from PATH (first match), and JAVA_HOME before PATH.
    let bin_a = fake_java_dir(directory.path(), "a/bin");
    let bin_b = fake_java_dir(directory.path(), "b/bin");
    let path = std::env::join_paths([&empty_path, &bin_a, &bin_b]).unwrap();
    let env = SpiceEnvironment {
        jar: Some(jar.clone().into()),
        java_home: None,
        path: Some(path.clone()),
    };
    let spice = spice_availability_in(None, &env).unwrap();
    assert_eq!(spice.jar(), jar);
    assert_eq!(
        spice.java(),
        bin_a.join(format!("java{}", std::env::consts::EXE_SUFFIX))
    );
    assert_eq!(
        spice.cache_dir(),
        Some(directory.path().join("cache").as_path())
    );
    let home = directory.path().join("jdk");
    let home_bin = fake_java_dir(&home, "bin");
    let env = SpiceEnvironment {
        java_home: Some(home.into()),
        ..env
    };
    assert_eq!(
        spice_availability_in(None, &env).unwrap().java(),
        home_bin.join(format!("java{}", std::env::consts::EXE_SUFFIX))
    );
}

/// Our side of the process boundary, with shell scripts standing in for `java`. They test how
/// we start the child and read its results — arguments, working directory, exit status,
/// stderr, output file — not SPICE.
#[cfg(unix)]
mod process_boundary {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Mutex;

    use super::*;
    use virtex_eval::Spice;

    /// Writing an executable while another thread forks can leave the fork holding it open
    /// ("text file busy" on exec): the tests that write and run scripts take turns.
    static SCRIPTS: Mutex<()> = Mutex::new(());

    fn script(path: &Path, body: &str) -> PathBuf {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_path_buf()
    }

    /// A jar file (never read: the "java" is a script) in `<root>/spice/`.
    fn jar(root: &Path) -> PathBuf {
        let directory = root.join("spice");
        std::fs::create_dir_all(&directory).unwrap();
        let jar = directory.join("spice-1.0.jar");
        std::fs::write(&jar, b"").unwrap();
        jar
    }

    fn entries() -> Vec<SpiceEntry> {
        [632, 139, 285]
            .into_iter()
            .map(|id| SpiceEntry {
                image_id: ImageId::Int(id),
                test: format!("caption {id}"),
                refs: vec![format!("reference {id}")],
            })
            .collect()
    }

    #[test]
    fn process_boundary_a_failing_child_is_an_error_with_its_stderr() {
        let _turn = SCRIPTS.lock().unwrap_or_else(|e| e.into_inner());
        let directory = tempfile::tempdir().unwrap();
        let java = script(
            &directory.path().join("java"),
            "echo 'progress line on stdout'\n\
             echo 'Error: Could not score batched file input:' >&2\n\
             echo 'java.lang.OutOfMemoryError: Java heap space' >&2\n\
             exit 1",
        );
        let jar = jar(directory.path());
        let err = Spice::new(&java, &jar).score(&entries()).unwrap_err();
        let EvalError::SpiceFailed {
            command,
            status,
            stderr_tail,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert!(
            command.starts_with(&java.display().to_string()),
            "{command}"
        );
        assert!(command.contains(&jar.display().to_string()), "{command}");
        assert!(command.ends_with("-subset -silent"), "{command}");
        assert_eq!(status, "exit status: 1");
        assert_eq!(
            stderr_tail,
            "Error: Could not score batched file input:\n\
             java.lang.OutOfMemoryError: Java heap space"
        );
        let message = err.to_string();
        assert!(
            message.contains("exit status: 1") && message.contains("OutOfMemoryError"),
            "{message}"
        );

        // Silent on stderr: the stdout tail is shown instead; a signal is reported as such.
        let quiet = script(
            &directory.path().join("quiet"),
            "echo 'only on stdout'\nexit 3",
        );
        let err = Spice::new(&quiet, &jar).score(&entries()).unwrap_err();
        assert!(
            err.to_string().contains("exit status: 3")
                && err.to_string().contains("only on stdout"),
            "{err}"
        );
        let killed = script(&directory.path().join("killed"), "kill -9 $$");
        let err = Spice::new(&killed, &jar).score(&entries()).unwrap_err();
        assert!(err.to_string().contains("signal: 9"), "{err}");
    }

    #[test]
    fn process_boundary_java_that_cannot_start_or_a_missing_jar_is_named() {
        let _turn = SCRIPTS.lock().unwrap_or_else(|e| e.into_inner());
        let directory = tempfile::tempdir().unwrap();
        let jar = jar(directory.path());
        let java = directory.path().join("no-such-java");
        let err = Spice::new(&java, &jar).score(&entries()).unwrap_err();
        assert!(matches!(err, EvalError::SpiceJava { .. }), "{err:?}");
        assert!(err.to_string().contains("no-such-java"), "{err}");

        let not_executable = directory.path().join("java-not-executable");
        std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").unwrap();
        let err = Spice::new(&not_executable, &jar)
            .score(&entries())
            .unwrap_err();
        assert!(err.to_string().contains("java-not-executable"), "{err}");

        let missing_jar = directory.path().join("gone/spice-1.0.jar");
        let err = Spice::new("java", &missing_jar)
            .score(&entries())
            .unwrap_err();
        assert!(
            err.to_string().contains(&missing_jar.display().to_string()),
            "{err}"
        );
    }

    /// The child gets pycocoevalcap's command line, runs in the jar's directory, reads the
    /// input file we wrote and leaves its output where `-out` says; we read that back in input
    /// order. The script copies the hand-written output fixture: plumbing, not SPICE.
    #[test]
    fn process_boundary_arguments_directory_and_output_file() {
        let _turn = SCRIPTS.lock().unwrap_or_else(|e| e.into_inner());
        let directory = tempfile::tempdir().unwrap();
        let record = directory.path().join("record");
        std::fs::create_dir_all(&record).unwrap();
        let body = format!(
            "printf '%s\\n' \"$@\" > '{record}/args'\n\
             pwd > '{record}/pwd'\n\
             cp \"$4\" '{record}/input.json'\n\
             while [ $# -gt 0 ]; do\n\
               if [ \"$1\" = -out ]; then cp '{fixture}' \"$2\"; fi\n\
               shift\n\
             done",
            record = record.display(),
            fixture = fixture("spice_output.json").display(),
        );
        let java = script(&directory.path().join("java"), &body);
        let jar = jar(directory.path());
        let entries = entries();
        let scores = Spice::new(&java, &jar).score(&entries).unwrap();

        let args = std::fs::read_to_string(record.join("args")).unwrap();
        let args: Vec<&str> = args.lines().collect();
        let cache = directory.path().join("spice/cache");
        assert_eq!(args.len(), 10, "{args:?}");
        assert_eq!(&args[..3], ["-jar", "-Xmx8G", &jar.display().to_string()]);
        assert!(args[3].ends_with("input_file.json"), "{args:?}");
        assert_eq!(&args[4..6], ["-cache", &cache.display().to_string()]);
        assert_eq!(args[6], "-out");
        assert!(args[7].ends_with("output_file.json"), "{args:?}");
        assert_eq!(&args[8..], ["-subset", "-silent"]);
        assert!(cache.is_dir(), "the cache directory is created");
        // Temporary files are removed afterwards.
        assert!(!Path::new(args[3]).exists() && !Path::new(args[7]).exists());

        let pwd = std::fs::read_to_string(record.join("pwd")).unwrap();
        assert_eq!(
            Path::new(pwd.trim()).canonicalize().unwrap(),
            jar.parent().unwrap().canonicalize().unwrap()
        );
        let input = std::fs::read_to_string(record.join("input.json")).unwrap();
        assert_eq!(input, spice_input_json(&entries));

        // Scores in input order (632, 139, 285); the mean over all images is the fixture's.
        let ids: Vec<ImageId> = scores
            .per_image
            .iter()
            .map(|s| s.image_id.clone())
            .collect();
        assert_eq!(ids, [632, 139, 285].map(ImageId::Int));
        assert_eq!(scores.per_image[1].all.f, 8.0 / 19.0);
        assert!((scores.spice - 43.0 / 171.0).abs() < 1e-15);

        // Without a cache: no `-cache` argument.
        Spice::new(&java, &jar)
            .with_cache_dir(None)
            .with_max_heap("2G")
            .score(&entries)
            .unwrap();
        let args = std::fs::read_to_string(record.join("args")).unwrap();
        assert!(
            !args.contains("-cache") && args.contains("-Xmx2G\n"),
            "{args}"
        );
    }

    #[test]
    fn process_boundary_output_that_does_not_match_the_input_is_refused() {
        let _turn = SCRIPTS.lock().unwrap_or_else(|e| e.into_inner());
        let directory = tempfile::tempdir().unwrap();
        let jar = jar(directory.path());

        let silent = script(&directory.path().join("writes-nothing"), "exit 0");
        let err = Spice::new(&silent, &jar).score(&entries()).unwrap_err();
        assert!(
            matches!(err, EvalError::SpiceOutput { .. }) && err.to_string().contains("no output"),
            "{err}"
        );

        let fixture = fixture("spice_output.json");
        let copies = script(
            &directory.path().join("copies-fixture"),
            &format!(
                "while [ $# -gt 0 ]; do\n\
                   if [ \"$1\" = -out ]; then cp '{}' \"$2\"; fi\n\
                   shift\n\
                 done",
                fixture.display()
            ),
        );
        // The fixture scores 139, 285 and 632: an input image it lacks, or one too many.
        let mut fewer = entries();
        fewer.pop();
        let err = Spice::new(&copies, &jar).score(&fewer).unwrap_err();
        assert!(
            err.to_string().contains("image 285 was not in the input"),
            "{err}"
        );
        let mut more = entries();
        more.push(SpiceEntry {
            image_id: ImageId::Int(7),
            test: String::new(),
            refs: vec!["x".into()],
        });
        let err = Spice::new(&copies, &jar).score(&more).unwrap_err();
        assert!(
            err.to_string().contains("input image 7 is not scored"),
            "{err}"
        );

        let garbage = script(
            &directory.path().join("writes-garbage"),
            "while [ $# -gt 0 ]; do\n\
               if [ \"$1\" = -out ]; then echo 'SPICE evaluation took: 1 s' > \"$2\"; fi\n\
               shift\n\
             done",
        );
        let err = Spice::new(&garbage, &jar).score(&entries()).unwrap_err();
        assert!(
            err.to_string().contains("output_file.json") && err.to_string().contains("not JSON"),
            "{err}"
        );
    }
}
