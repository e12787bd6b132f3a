//! Parameter discovery by module path.
//!
//! A parameter's path is the dotted chain of field names from the root module, as burn's
//! `#[derive(Module)]` reports them: struct fields by name, `Vec`/array/tuple elements by index,
//! `Option` fields transparently. Enum variant names are left out, so a path reads like a
//! PyTorch `named_parameters()` name (`visual.cnn.layer1.0.conv1.weight`).

use std::collections::{HashMap, HashSet};

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

/// One trainable parameter of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamEntry {
    /// Dotted module path, e.g. `textual.transformer.layers.0.norm1.gamma`.
    pub path: String,
    /// Burn's identifier of the parameter (the key of gradients and optimizer state).
    pub id: ParamId,
    /// Shape of the tensor.
    pub shape: Vec<usize>,
}

impl ParamEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Lists the trainable parameters of `module` in visiting (declaration) order.
///
/// Trainable means: a float parameter whose tensor requires gradients on the autodiff backend.
/// Buffers such as BatchNorm running statistics (`RunningState`) and frozen parameters are left
/// out. A parameter reachable under two paths (the same [`ParamId`] twice) is listed once, under
/// the first path, as PyTorch's `named_parameters()` de-duplicates tied weights.
pub fn trainable_params<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M) -> Vec<ParamEntry> {
    let mut collector = Collector {
        path: PathStack::default(),
        seen: HashSet::new(),
        entries: Vec::new(),
    };
    module.visit(&mut collector);
    collector.entries
}

/// The path of the field being visited; enum variants are skipped.
#[derive(Default)]
pub(crate) struct PathStack {
    parts: Vec<String>,
}

impl PathStack {
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.parts.push(name.to_string());
        }
    }

    pub(crate) fn exit(&mut self, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.parts.pop();
        }
    }

    pub(crate) fn current(&self) -> String {
        self.parts.join(".")
    }
}

struct Collector {
    path: PathStack,
    seen: HashSet<ParamId>,
    entries: Vec<ParamEntry>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        if !value.is_require_grad() || !self.seen.insert(param.id) {
            return;
        }
        self.entries.push(ParamEntry {
            path: self.path.current(),
            id: param.id,
            shape: value.dims().to_vec(),
        });
    }
}

/// Gives every trainable parameter found at one of `ids`' paths the id stored there, so that
/// state keyed by [`ParamId`] (burn's optimizer records) lines up with a module whose
/// parameters were created afresh (e.g. loaded from a safetensors file into a new model).
pub(crate) fn assign_param_ids<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    ids: &HashMap<String, ParamId>,
) -> M {
    let mut mapper = IdAssigner {
        path: PathStack::default(),
        ids,
        assigned: HashMap::new(),
    };
    module.map(&mut mapper)
}

struct IdAssigner<'a> {
    path: PathStack,
    ids: &'a HashMap<String, ParamId>,
    /// Old id → new id, so a tied parameter's later occurrences follow its first one.
    assigned: HashMap<ParamId, ParamId>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for IdAssigner<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let id = match self.ids.get(&self.path.current()) {
            Some(saved) if tensor.is_require_grad() => {
                self.assigned.insert(id, *saved);
                *saved
            }
            _ => self.assigned.get(&id).copied().unwrap_or(id),
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}
