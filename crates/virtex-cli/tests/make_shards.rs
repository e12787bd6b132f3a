//! `virtex make-shards`: shards of the sample's COCO train split and of a plain captions file,
//! read back by `virtex_data::ShardList`.

use clap::Parser;
use virtex_cli::{Cli, Command};
use virtex_data::{sample_data_root, ShardList, ShardSplit, ShardStream, StreamOptions};

fn run(args: &[&str]) -> Result<String, virtex_cli::CliError> {
    let cli = Cli::parse_from(std::iter::once("virtex").chain(args.iter().copied()));
    let Command::MakeShards(args) = cli.command else {
        panic!("not make-shards");
    };
    let mut log = Vec::new();
    args.run_to(&mut log)?;
    Ok(String::from_utf8(log).unwrap())
}

#[test]
fn coco_and_plain_captions_become_shards() {
    let out = tempfile::tempdir().unwrap();
    let coco_out = out.path().join("coco");
    let root = sample_data_root();
    let log = run(&[
        "make-shards",
        "--coco",
        root.to_str().unwrap(),
        "--split",
        "train",
        "--out",
        coco_out.to_str().unwrap(),
        "--samples-per-shard",
        "4",
    ])
    .unwrap();
    assert!(
        log.contains("wrote 10 samples") && log.contains("3 shards"),
        "{log}"
    );
    let pattern = log.trim().rsplit(": ").next().unwrap();
    let list = ShardList::open(pattern).unwrap();
    assert_eq!(list.sample_counts(), [4, 4, 2]);

    // A plain TSV file with paths relative to --image-root, one shard under a size limit.
    let tsv = out.path().join("val.tsv");
    std::fs::write(
        &tsv,
        "image\tcaption\nval2017/000000000011.jpg\tA Room.\nval2017/000000000011.jpg\tA TV.\n",
    )
    .unwrap();
    let plain_out = out.path().join("plain");
    let log = run(&[
        "make-shards",
        "--captions",
        tsv.to_str().unwrap(),
        "--image-root",
        root.to_str().unwrap(),
        "--out",
        plain_out.to_str().unwrap(),
        "--max-shard-size",
        "1G",
        "--prefix",
        "val-",
    ])
    .unwrap();
    assert!(log.contains("wrote 1 samples"), "{log}");
    let list = std::sync::Arc::new(
        ShardList::open(plain_out.join("val-00000.tar").to_str().unwrap()).unwrap(),
    );
    let options = StreamOptions {
        shuffle: false,
        split: ShardSplit::default(),
        ..StreamOptions::default()
    };
    let samples: Vec<_> = ShardStream::new(list, options, 0)
        .unwrap()
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].captions, ["a room.", "a tv."]);

    // Writing into the input directory is refused.
    let inside = root.join("shards");
    let err = run(&[
        "make-shards",
        "--coco",
        root.to_str().unwrap(),
        "--out",
        inside.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(!inside.exists(), "{err}");
    let err = run(&[
        "make-shards",
        "--coco",
        root.to_str().unwrap(),
        "--split",
        "test",
        "--out",
        coco_out.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("--split"), "{err}");
}
