//! The parameter groups `pretrain_coco` trains with (`virtex_train::optimizer_config` of the preset,
//! as the loop builds them) on the real VirTex model match upstream's counts (`R50-L1-H1024`:
//! 69,482,320 parameters; computed from upstream's names in `tools/reference/lookahead.py`).

use burn::backend::{Autodiff, Flex};
use virtex_train::PretrainConfig;
use virtex_train::{model_config, optimizer_config};

type B = Autodiff<Flex>;

#[test]
fn r50_l1_h1024_groups_match_upstream() {
    let config = PretrainConfig::preset("bicaptioning_R_50_L1_H1024").unwrap();
    let model = model_config(&config, config.data.vocab_size)
        .unwrap()
        .init::<B>(&Default::default())
        .unwrap();
    let optimizer = optimizer_config(&config).unwrap();
    let table = optimizer.groups.describe(&model).unwrap();
    assert_eq!(table.total_elements(), 69_482_320);

    let mut visual = 0;
    let lr_of = |name: &str| {
        table
            .params
            .iter()
            .find(|p| p.group == name)
            .map(|p| p.lr)
            .unwrap()
    };
    assert_eq!((lr_of("visual"), lr_of("common")), (0.2, 0.001));
    let mut decayed = 0;
    let mut no_decay = 0;
    for param in &table.params {
        match (param.group.as_str(), param.weight_decay == 0.0) {
            ("visual", false) => visual += param.numel(),
            ("common", false) => decayed += param.numel(),
            ("common", true) => no_decay += param.numel(),
            other => panic!("unexpected group {other:?} for {}", param.path),
        }
    }
    assert_eq!(visual, 23_508_032);
    assert_eq!(decayed, 45_933_328);
    assert_eq!(no_decay, 40_960);
}
