//! Parameter groups from parameter path names (`virtex/optim/__init__.py` and
//! `scripts/pretrain_virtex.py` upstream).
//!
//! Upstream builds one torch param group per parameter: LR `OPTIM.CNN_LR` when the name contains
//! `cnn`, else `OPTIM.LR`; weight decay 0 when the name matches `OPTIM.NO_DECAY` with `re.match`,
//! else `OPTIM.WEIGHT_DECAY`. Here the same decisions are made on burn's module paths and the
//! parameters with equal (LR group, decay) are optimised together.
//!
//! # The no-decay regex on burn paths
//!
//! `.*textual.(embedding|transformer).*(norm.*|bias)` is applied with `re.match` semantics:
//! anchored at the start, not at the end. On burn paths, for a model whose fields are named like
//! upstream's modules:
//! - LayerNorms: burn's `LayerNorm` names its parameters `gamma`/`beta` where torch says
//!   `weight`/`bias`. The match does not depend on it: `norm.*` matches from the module name on
//!   (`textual.embedding.layer_norm.gamma`, `textual.transformer.layers.0.norm1.gamma`, and
//!   burn's own decoder names `norm_1`…`norm_3`).
//! - Biases: anything with `bias` after `textual.embedding`/`textual.transformer` matches
//!   (`…self_attn.in_proj_bias`, `…out_proj.bias`, `…linear1.bias`; burn's MHA `…query.bias`).
//! - Not matched, so decayed: `…linear1.weight`, `…in_proj_weight`, `…query.weight`,
//!   `textual.embedding.words.weight`, `…positions.weight`, `textual.visual_projection.*`,
//!   `textual.output.bias`, every `visual.cnn.*` parameter (BatchNorm included).
//! - The leading `.*` also matches `backward_textual.transformer.…`.
//!
//! Use [`ParamGroupsConfig::describe`] to print what a real model gets.

use std::collections::HashMap;
use std::fmt;

use burn::config::Config;
use burn::module::{AutodiffModule, ParamId};
use burn::tensor::backend::AutodiffBackend;
use regex::Regex;

use crate::error::{invalid, LookaheadError, Result};
use crate::paths::{trainable_params, ParamEntry};

/// VirTex's no-decay regex (`OPTIM.NO_DECAY`).
pub const VIRTEX_NO_DECAY: &str = ".*textual.(embedding|transformer).*(norm.*|bias)";

/// A named LR group: parameters whose path contains a match of `pattern` get `lr`.
#[derive(Config, Debug, PartialEq)]
pub struct GroupRule {
    /// Name used in logs and reports (VirTex logs the CNN LR as `visual`).
    pub name: String,
    /// Regex searched anywhere in the path (Python `re.search`; a plain word means "contains").
    pub pattern: String,
    /// Base learning rate of the group.
    pub lr: f64,
}

/// How parameters are split into groups, with VirTex's values as defaults.
#[derive(Config, Debug, PartialEq)]
pub struct ParamGroupsConfig {
    /// LR groups, tried in order; the first whose pattern matches wins. Default: `visual` =
    /// paths containing `cnn` at LR 0.2 (`OPTIM.CNN_LR`).
    #[config(
        default = "vec![GroupRule::new(String::from(\"visual\"), String::from(\"cnn\"), 0.2)]"
    )]
    pub rules: Vec<GroupRule>,
    /// Name of the group of parameters no rule matches.
    #[config(default = "String::from(\"common\")")]
    pub default_group: String,
    /// Base learning rate of the default group (`OPTIM.LR`).
    #[config(default = 0.001)]
    pub lr: f64,
    /// Weight decay of decayed parameters (`OPTIM.WEIGHT_DECAY`).
    #[config(default = 1e-4)]
    pub weight_decay: f64,
    /// Paths matching this regex from their start (Python `re.match`) get no weight decay
    /// (`OPTIM.NO_DECAY`); `None` decays everything (upstream's `none`).
    #[config(default = "Some(String::from(crate::groups::VIRTEX_NO_DECAY))")]
    pub no_decay: Option<String>,
}

/// One optimisation group: parameters sharing an LR group and a weight decay.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// Name of the LR group (`visual`, `common`, …).
    pub name: String,
    /// Base learning rate (before the schedule's multiplier).
    pub lr: f64,
    /// Weight decay of the group (0 for no-decay parameters).
    pub weight_decay: f64,
}

/// One trainable parameter with its group settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// Dotted module path.
    pub path: String,
    /// Burn's parameter id.
    pub id: ParamId,
    /// Shape.
    pub shape: Vec<usize>,
    /// Name of the LR group.
    pub group: String,
    /// Base learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

impl ParamInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Parameter and element counts of one optimisation group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSummary {
    /// The group.
    pub group: ParamGroup,
    /// Number of parameter tensors.
    pub tensors: usize,
    /// Number of scalar parameters.
    pub elements: usize,
}

/// Every parameter of a module with its group: see [`ParamGroupsConfig::describe`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParamTable {
    /// The parameters in module order.
    pub params: Vec<ParamInfo>,
}

impl ParamTable {
    /// Total number of scalar parameters.
    pub fn total_elements(&self) -> usize {
        self.params.iter().map(ParamInfo::numel).sum()
    }

    /// Counts per optimisation group, in order of first appearance.
    pub fn summary(&self) -> Vec<GroupSummary> {
        let mut out: Vec<GroupSummary> = Vec::new();
        for info in &self.params {
            let group = ParamGroup {
                name: info.group.clone(),
                lr: info.lr,
                weight_decay: info.weight_decay,
            };
            match out.iter_mut().find(|s| s.group == group) {
                Some(summary) => {
                    summary.tensors += 1;
                    summary.elements += info.numel();
                }
                None => out.push(GroupSummary {
                    group,
                    tensors: 1,
                    elements: info.numel(),
                }),
            }
        }
        out
    }
}

impl fmt::Display for ParamTable {
    /// One line per parameter (`path  shape  group  lr  weight_decay  elements`), then one per
    /// group and the total.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.params.iter().map(|p| p.path.len()).max().unwrap_or(4);
        for p in &self.params {
            writeln!(
                f,
                "{:<width$}  {:<18}  {:<10}  lr {:<8}  wd {:<8}  {:>12}",
                p.path,
                format!("{:?}", p.shape),
                p.group,
                p.lr,
                p.weight_decay,
                p.numel(),
            )?;
        }
        for s in self.summary() {
            writeln!(
                f,
                "group {:<10} lr {:<8} wd {:<8} {:>5} tensors {:>12} parameters",
                s.group.name, s.group.lr, s.group.weight_decay, s.tensors, s.elements
            )?;
        }
        write!(f, "total {} parameters", self.total_elements())
    }
}

/// The compiled form of a [`ParamGroupsConfig`].
#[derive(Debug, Clone)]
pub(crate) struct GroupMatcher {
    rules: Vec<(GroupRule, Regex)>,
    no_decay: Option<Regex>,
    config: ParamGroupsConfig,
}

impl GroupMatcher {
    pub(crate) fn new(config: &ParamGroupsConfig) -> Result<Self> {
        let compile = |setting: String, pattern: &str, anchored: bool| {
            let source = if anchored {
                format!("^(?:{pattern})")
            } else {
                pattern.to_string()
            };
            Regex::new(&source).map_err(|err| LookaheadError::InvalidRegex {
                setting,
                pattern: pattern.to_string(),
                message: err.to_string(),
            })
        };
        let check_lr = |setting: String, lr: f64| {
            if lr.is_finite() && lr >= 0.0 {
                Ok(())
            } else {
                Err(invalid(setting, lr, "a finite learning rate ≥ 0"))
            }
        };
        let mut rules = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            check_lr(format!("groups.rules[{i}].lr"), rule.lr)?;
            let regex = compile(format!("groups.rules[{i}].pattern"), &rule.pattern, false)?;
            rules.push((rule.clone(), regex));
        }
        check_lr("groups.lr".into(), config.lr)?;
        if !(config.weight_decay.is_finite() && config.weight_decay >= 0.0) {
            return Err(invalid(
                "groups.weight_decay",
                config.weight_decay,
                "a finite number ≥ 0",
            ));
        }
        let no_decay = match &config.no_decay {
            Some(pattern) => Some(compile("groups.no_decay".into(), pattern, true)?),
            None => None,
        };
        Ok(Self {
            rules,
            no_decay,
            config: config.clone(),
        })
    }

    /// The group of one path.
    pub(crate) fn group_of(&self, path: &str) -> ParamGroup {
        let (name, lr) = self
            .rules
            .iter()
            .find(|(_, regex)| regex.is_match(path))
            .map(|(rule, _)| (rule.name.clone(), rule.lr))
            .unwrap_or_else(|| (self.config.default_group.clone(), self.config.lr));
        let decayed = !self.no_decay.as_ref().is_some_and(|r| r.is_match(path));
        ParamGroup {
            name,
            lr,
            weight_decay: if decayed {
                self.config.weight_decay
            } else {
                0.0
            },
        }
    }

    /// Names of the LR groups in order: the rules, then the default group.
    pub(crate) fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for name in self
            .rules
            .iter()
            .map(|(rule, _)| &rule.name)
            .chain(std::iter::once(&self.config.default_group))
        {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    pub(crate) fn table(&self, entries: &[ParamEntry]) -> ParamTable {
        ParamTable {
            params: entries
                .iter()
                .map(|entry| {
                    let group = self.group_of(&entry.path);
                    ParamInfo {
                        path: entry.path.clone(),
                        id: entry.id,
                        shape: entry.shape.clone(),
                        group: group.name,
                        lr: group.lr,
                        weight_decay: group.weight_decay,
                    }
                })
                .collect(),
        }
    }
}

impl ParamGroupsConfig {
    /// The group one parameter path falls into.
    pub fn group_of(&self, path: &str) -> Result<ParamGroup> {
        Ok(GroupMatcher::new(self)?.group_of(path))
    }

    /// Lists every trainable parameter of `module` with its path, group, base LR, weight decay
    /// and size (upstream's base model, R50-L1-H1024, has 69,482,320 parameters).
    ///
    /// Call it on the training (autodiff) module: that is where burn marks parameters as
    /// trainable, which tells them from buffers such as BatchNorm running statistics.
    pub fn describe<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        module: &M,
    ) -> Result<ParamTable> {
        Ok(GroupMatcher::new(self)?.table(&trainable_params(module)))
    }
}

/// Groups parameter indices by optimisation group, in group order (rules, default; decayed
/// before not decayed).
pub(crate) fn partition(
    matcher: &GroupMatcher,
    table: &ParamTable,
) -> Vec<(ParamGroup, Vec<usize>)> {
    let mut order: HashMap<String, usize> = HashMap::new();
    for (i, name) in matcher.group_names().into_iter().enumerate() {
        order.insert(name, i);
    }
    let mut parts: Vec<(ParamGroup, Vec<usize>)> = Vec::new();
    for (index, info) in table.params.iter().enumerate() {
        let group = ParamGroup {
            name: info.group.clone(),
            lr: info.lr,
            weight_decay: info.weight_decay,
        };
        match parts.iter_mut().find(|(g, _)| *g == group) {
            Some((_, members)) => members.push(index),
            None => parts.push((group, vec![index])),
        }
    }
    parts.sort_by(|(a, _), (b, _)| {
        let rank = |g: &ParamGroup| {
            (
                order.get(&g.name).copied().unwrap_or(usize::MAX),
                g.weight_decay == 0.0,
            )
        };
        rank(a).cmp(&rank(b))
    });
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn virtex() -> GroupMatcher {
        GroupMatcher::new(&ParamGroupsConfig::new()).unwrap()
    }

    #[test]
    fn virtex_groups_on_burn_paths() {
        let m = virtex();
        let cases = [
            // (path, group, decayed)
            ("visual.cnn.conv1.weight", "visual", true),
            ("visual.cnn.layer1.0.bn1.weight", "visual", true),
            ("visual.cnn.layer1.0.bn1.gamma", "visual", true),
            ("textual.visual_projection.weight", "common", true),
            ("textual.visual_projection.bias", "common", true),
            ("textual.embedding.words.weight", "common", true),
            ("textual.embedding.positions.weight", "common", true),
            ("textual.embedding.layer_norm.gamma", "common", false),
            ("textual.embedding.layer_norm.beta", "common", false),
            ("textual.transformer.layers.0.norm1.gamma", "common", false),
            ("textual.transformer.layers.0.norm_3.beta", "common", false),
            (
                "textual.transformer.layers.0.self_attn.in_proj_weight",
                "common",
                true,
            ),
            (
                "textual.transformer.layers.0.self_attn.in_proj_bias",
                "common",
                false,
            ),
            (
                "textual.transformer.layers.0.multihead_attn.out_proj.bias",
                "common",
                false,
            ),
            (
                "textual.transformer.layers.0.self_attn.query.weight",
                "common",
                true,
            ),
            (
                "textual.transformer.layers.0.self_attn.query.bias",
                "common",
                false,
            ),
            (
                "textual.transformer.layers.0.linear1.weight",
                "common",
                true,
            ),
            ("textual.transformer.layers.0.linear2.bias", "common", false),
            (
                "backward_textual.transformer.layers.0.norm2.gamma",
                "common",
                false,
            ),
            (
                "backward_textual.transformer.layers.0.linear1.weight",
                "common",
                true,
            ),
            ("textual.output.bias", "common", true),
        ];
        for (path, group, decayed) in cases {
            let g = m.group_of(path);
            assert_eq!(g.name, group, "{path}");
            assert_eq!(g.lr, if group == "visual" { 0.2 } else { 0.001 }, "{path}");
            assert_eq!(g.weight_decay, if decayed { 1e-4 } else { 0.0 }, "{path}");
        }
    }

    #[test]
    fn no_decay_is_anchored_at_the_start_only() {
        // `re.match` semantics: `x.textual…` still matches thanks to the leading `.*`, but a
        // pattern without it must match from the first character.
        let config = ParamGroupsConfig::new().with_no_decay(Some("bias".into()));
        let m = GroupMatcher::new(&config).unwrap();
        assert_eq!(m.group_of("bias.x").weight_decay, 0.0);
        assert_eq!(m.group_of("layer.bias").weight_decay, 1e-4);
        let none = GroupMatcher::new(&ParamGroupsConfig::new().with_no_decay(None)).unwrap();
        assert_eq!(
            none.group_of("textual.transformer.norm1.gamma")
                .weight_decay,
            1e-4
        );
    }

    #[test]
    fn bad_regex_names_the_setting() {
        let config = ParamGroupsConfig::new().with_no_decay(Some("(".into()));
        let err = GroupMatcher::new(&config).unwrap_err().to_string();
        assert!(
            err.contains("groups.no_decay") && err.contains("`(`"),
            "{err}"
        );
        let config =
            ParamGroupsConfig::new().with_rules(vec![GroupRule::new("x".into(), "[".into(), 0.1)]);
        let err = GroupMatcher::new(&config).unwrap_err().to_string();
        assert!(err.contains("groups.rules[0].pattern"), "{err}");
        let config = ParamGroupsConfig::new().with_lr(-1.0);
        assert!(GroupMatcher::new(&config)
            .unwrap_err()
            .to_string()
            .contains("groups.lr"));
    }
}
