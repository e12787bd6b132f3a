//! Caption decoding (`virtex/utils/beam_search.py`, `virtex/utils/nucleus_sampling.py`):
//! beam search in two modes, nucleus sampling and greedy, with key/value caching.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use virtex_textual::{DecodingState, TransformerDecoderTextualHead};

use crate::error::{Result, VirtexError};

/// What beam search feeds the decoder after the first step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BeamSearchMode {
    /// Upstream's behaviour: `[SOS]` is fed at step 0 only; later steps feed `[w1..wt]` at
    /// positions `0..t−1` (no `[SOS]`), a train/test mismatch present in every upstream release.
    /// Needed to reproduce the published captions.
    Upstream,
    /// Always feed the SOS-prefixed sequence `[SOS, w1..wt]`, as the model was trained.
    #[default]
    Correct,
}

/// The decoding algorithm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DecodingStrategy {
    /// `AutoRegressiveBeamSearch`: `beam_size` beams, `per_node_beam_size` candidates per beam,
    /// the immediate-repetition ban (−10000 on each beam's last token), EOS-finished beams
    /// extended with EOS at log-prob 0, no length normalisation, stop when every beam ends in EOS.
    /// Returns beam 0 (the highest summed log-probability).
    BeamSearch {
        /// Beams kept (5 upstream).
        beam_size: usize,
        /// Candidates per beam at each step (2 upstream).
        per_node_beam_size: usize,
        /// SOS handling.
        mode: BeamSearchMode,
    },
    /// `AutoRegressiveNucleusSampling`: sample from the smallest set of tokens whose probability
    /// reaches `nucleus_size` (plus the first token crossing it), the last token banned; EOS
    /// sticks once emitted. Seeded: the same seed gives the same captions on the same backend.
    NucleusSampling {
        /// `p` (0.9 upstream).
        nucleus_size: f64,
        /// Seed of the sampler.
        seed: u64,
    },
    /// Beam search with a single beam in [`BeamSearchMode::Correct`]: the arg-max token at each
    /// step, with the same repetition ban and EOS handling.
    Greedy,
}

/// How to decode captions.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodingConfig {
    /// The algorithm.
    pub strategy: DecodingStrategy,
    /// At most this many tokens are generated (`MODEL.DECODER.MAX_DECODING_STEPS`, 30); it
    /// cannot exceed the head's position table.
    pub max_steps: usize,
    /// `[SOS]` id.
    pub sos_index: usize,
    /// `[EOS]` id.
    pub eos_index: usize,
    /// Cache keys/values of earlier positions (cost linear in length). `false` recomputes the
    /// whole prefix at every step, as upstream does; both give the same tokens.
    pub use_cache: bool,
    /// Return, for every generated token, the textual head's cross-attention over the visual
    /// grid ([`Captions::attention`]); off by default.
    pub record_attention: bool,
}

impl DecodingConfig {
    /// Upstream's decoder: beam 5, 2 candidates per beam, 30 steps, in the given mode.
    pub fn beam_search(mode: BeamSearchMode) -> Self {
        Self::with_strategy(DecodingStrategy::BeamSearch {
            beam_size: 5,
            per_node_beam_size: 2,
            mode,
        })
    }

    /// Nucleus sampling with p = 0.9.
    pub fn nucleus(seed: u64) -> Self {
        Self::with_strategy(DecodingStrategy::NucleusSampling {
            nucleus_size: 0.9,
            seed,
        })
    }

    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::with_strategy(DecodingStrategy::Greedy)
    }

    /// Any strategy with upstream's defaults for the rest (30 steps, SOS 1, EOS 2, cache on).
    pub fn with_strategy(strategy: DecodingStrategy) -> Self {
        Self {
            strategy,
            max_steps: 30,
            sos_index: 1,
            eos_index: 2,
            use_cache: true,
            record_attention: false,
        }
    }

    /// Sets the step limit.
    pub fn with_max_steps(mut self, max_steps: usize) -> Self {
        self.max_steps = max_steps;
        self
    }

    /// Turns key/value caching on or off.
    pub fn with_cache(mut self, use_cache: bool) -> Self {
        self.use_cache = use_cache;
        self
    }

    /// Turns the recording of cross-attention maps on or off ([`Captions::attention`]).
    pub fn with_attention(mut self, record_attention: bool) -> Self {
        self.record_attention = record_attention;
        self
    }

    fn validate(&self, vocab_size: usize, positions: usize) -> Result<()> {
        let invalid = |message: String| Err(VirtexError::InvalidDecoding(message));
        if self.max_steps == 0 || self.max_steps > positions {
            return invalid(format!(
                "max_steps must be in 1..={positions} (the head's position table), got {}",
                self.max_steps
            ));
        }
        for (name, id) in [("sos_index", self.sos_index), ("eos_index", self.eos_index)] {
            if id >= vocab_size {
                return invalid(format!(
                    "{name} {id} is outside the vocabulary of {vocab_size}"
                ));
            }
        }
        match self.strategy {
            DecodingStrategy::BeamSearch {
                beam_size,
                per_node_beam_size,
                ..
            } if beam_size == 0 || per_node_beam_size == 0 || per_node_beam_size > vocab_size => {
                invalid(format!(
                    "beam_size ({beam_size}) and per_node_beam_size ({per_node_beam_size}) must be \
                     positive, and per_node_beam_size at most the vocabulary ({vocab_size})"
                ))
            }
            DecodingStrategy::BeamSearch { beam_size, .. } if beam_size > vocab_size => invalid(
                format!("beam_size {beam_size} exceeds the vocabulary of {vocab_size}"),
            ),
            DecodingStrategy::NucleusSampling { nucleus_size, .. }
                if !(nucleus_size > 0.0 && nucleus_size <= 1.0) =>
            {
                invalid(format!(
                    "nucleus_size must be in (0, 1], got {nucleus_size}"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Decoded captions, one per image.
#[derive(Debug, Clone, PartialEq)]
pub struct Captions {
    /// Token ids as upstream returns them: without `[SOS]`, possibly ending in repeated
    /// `[EOS]` (a batch runs until every beam/sample ended). All rows have the same length.
    pub tokens: Vec<Vec<u32>>,
    /// Summed log-probability of each returned beam (beam search and greedy); `None` for
    /// sampling.
    pub log_probs: Option<Vec<f32>>,
    /// With [`DecodingConfig::record_attention`], one entry per caption: for each token of
    /// [`Captions::tokens`], the cross-attention the decoder paid to the visual grid when it
    /// predicted that token (for beam search, along the returned beam).
    pub attention: Option<Vec<CaptionAttention>>,
}

/// Where the textual head looked while it wrote one caption: for each generated token and each
/// decoder layer, the cross-attention weights of the query that predicted the token over the
/// `height × width` visual grid, averaged over the heads (the paper's Figure 5 maps).
///
/// Each map is non-negative and sums to 1 (a softmax over the grid).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionAttention {
    /// `[tokens, layers, height × width]`, row-major; grid positions in the backbone's
    /// row-major order (`S = y · width + x`).
    pub weights: Vec<f32>,
    /// Tokens of the caption (the length of its row in [`Captions::tokens`]).
    pub tokens: usize,
    /// Decoder layers `L`.
    pub layers: usize,
    /// Grid height (7 for a 224² image and a ResNet-50).
    pub height: usize,
    /// Grid width.
    pub width: usize,
}

impl CaptionAttention {
    /// The map of `token` in `layer`, `height × width` weights summing to 1.
    ///
    /// # Panics
    /// If `token >= self.tokens` or `layer >= self.layers`.
    pub fn map(&self, token: usize, layer: usize) -> &[f32] {
        assert!(
            token < self.tokens && layer < self.layers,
            "token {token} / layer {layer} outside {} tokens × {} layers",
            self.tokens,
            self.layers
        );
        let positions = self.height * self.width;
        let start = (token * self.layers + layer) * positions;
        &self.weights[start..start + positions]
    }

    /// The map of `token` averaged over the layers (what `virtex caption --attention` draws).
    ///
    /// # Panics
    /// If `token >= self.tokens`.
    pub fn layer_mean(&self, token: usize) -> Vec<f32> {
        let positions = self.height * self.width;
        let mut mean = vec![0.0f32; positions];
        for layer in 0..self.layers {
            for (sum, &weight) in mean.iter_mut().zip(self.map(token, layer)) {
                *sum += weight / self.layers as f32;
            }
        }
        mean
    }
}

impl Captions {
    /// Each caption cut before its first `[EOS]`: what a tokenizer should decode.
    pub fn trimmed(&self, eos_index: usize) -> Vec<Vec<u32>> {
        self.tokens
            .iter()
            .map(|row| {
                row.iter()
                    .copied()
                    .take_while(|&token| token as usize != eos_index)
                    .collect()
            })
            .collect()
    }
}

/// Decodes captions for a batch of `[B, C, h, w]` visual features with a textual head.
///
/// Run it on a non-autodiff backend (`model.valid()`): dropout must be off.
pub fn decode<B: Backend>(
    head: &TransformerDecoderTextualHead<B>,
    visual_features: Tensor<B, 4>,
    config: &DecodingConfig,
) -> Result<Captions> {
    config.validate(head.vocab_size(), head.embedding.max_caption_length())?;
    let [_, channels, _, _] = visual_features.dims();
    if channels != head.visual_feature_size() {
        return Err(VirtexError::InvalidDecoding(format!(
            "the features have {channels} channels, the head expects {}",
            head.visual_feature_size()
        )));
    }
    let [_, _, height, width] = visual_features.dims();
    let memory = head.project_visual(visual_features);
    let (captions, histories) = match config.strategy {
        DecodingStrategy::BeamSearch {
            beam_size,
            per_node_beam_size,
            mode,
        } => beam_search(head, memory, config, beam_size, per_node_beam_size, mode),
        DecodingStrategy::Greedy => {
            beam_search(head, memory, config, 1, 2, BeamSearchMode::Correct)
        }
        DecodingStrategy::NucleusSampling { nucleus_size, seed } => {
            nucleus_sampling(head, memory, config, nucleus_size, seed)
        }
    };
    let layers = head.transformer.layers.len();
    let attention = histories.map(|histories| {
        histories
            .into_iter()
            .zip(&captions.tokens)
            .map(|(weights, tokens)| CaptionAttention {
                weights,
                tokens: tokens.len(),
                layers,
                height,
                width,
            })
            .collect()
    });
    Ok(Captions {
        attention,
        ..captions
    })
}

/// Per row, the attention maps of the tokens generated so far, `[tokens, layers, S]` flattened
/// (`None` when attention is not recorded).
type AttentionHistories = Option<Vec<Vec<f32>>>;

/// The heads-averaged cross-attention of each row's last fed position, `[N][L × S]`: the query
/// whose output predicts the next token.
fn last_position_attention<B: Backend>(weights: &[Tensor<B, 4>]) -> Vec<Vec<f32>> {
    let Some([rows, _, positions, keys]) = weights.first().map(Tensor::dims) else {
        return Vec::new();
    };
    if rows == 0 {
        return Vec::new();
    }
    let per_layer: Vec<Tensor<B, 3>> = weights
        .iter()
        .map(|layer| {
            layer
                .clone()
                .narrow(2, positions - 1, 1)
                .mean_dim(1)
                .reshape([rows, 1, keys])
        })
        .collect();
    let flat = to_f32(Tensor::cat(per_layer, 1));
    flat.chunks(flat.len() / rows)
        .map(<[f32]>::to_vec)
        .collect()
}

/// Runs the decoder step by step, either with a key/value cache or by recomputing the prefix,
/// optionally recording the cross-attention of each step's last position.
struct Stepper<B: Backend> {
    mode: StepperMode<B>,
    record_attention: bool,
}

enum StepperMode<B: Backend> {
    Cached(DecodingState<B>),
    Full(Tensor<B, 3>),
}

impl<B: Backend> Stepper<B> {
    fn new(
        head: &TransformerDecoderTextualHead<B>,
        memory: Tensor<B, 3>,
        config: &DecodingConfig,
    ) -> Self {
        let mode = if config.use_cache {
            StepperMode::Cached(
                head.start_decoding(memory)
                    .recording_cross_attention(config.record_attention),
            )
        } else {
            StepperMode::Full(memory)
        };
        Self {
            mode,
            record_attention: config.record_attention,
        }
    }

    /// Logits `[N, V]` of the position after `fed` (the whole sequence the decoder should see;
    /// the cached stepper only consumes the positions it has not seen), and with recording on
    /// the attention of that position ([`last_position_attention`]).
    fn step(
        &mut self,
        head: &TransformerDecoderTextualHead<B>,
        fed: &[Vec<u32>],
    ) -> (Tensor<B, 2>, Option<Vec<Vec<f32>>>) {
        let rows = fed.len();
        let length = fed.first().map_or(0, Vec::len);
        match &mut self.mode {
            StepperMode::Cached(state) => {
                let seen = state.position;
                let device = state.layers[0].memory.key.device();
                let new = token_tensor::<B>(fed, seen, &device);
                let logits = head.decode_step(state, new);
                let attention = self
                    .record_attention
                    .then(|| last_position_attention(&state.cross_attention));
                (logits, attention)
            }
            StepperMode::Full(memory) if self.record_attention => {
                // The same recomputation of the whole prefix, through a fresh state so the
                // weights come back with it.
                let tokens = token_tensor::<B>(fed, 0, &memory.device());
                let mut state = head
                    .start_decoding(memory.clone())
                    .recording_cross_attention(true);
                let logits = head.decode_step(&mut state, tokens);
                (
                    logits,
                    Some(last_position_attention(&state.cross_attention)),
                )
            }
            StepperMode::Full(memory) => {
                let device = memory.device();
                let tokens = token_tensor::<B>(fed, 0, &device);
                let lengths = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(vec![length as i64; rows], [rows]),
                    &device,
                );
                let logits =
                    head.forward_with_decoder(&head.transformer, memory.clone(), tokens, lengths);
                let vocab = logits.dims()[2];
                (logits.narrow(1, length - 1, 1).reshape([rows, vocab]), None)
            }
        }
    }

    /// Keeps the rows `indices` (beam expansion and reordering).
    fn select(self, indices: &[usize]) -> Self {
        let mode = match self.mode {
            StepperMode::Cached(state) => {
                let device = state.layers[0].memory.key.device();
                StepperMode::Cached(state.select(index_tensor::<B>(indices, &device)))
            }
            StepperMode::Full(memory) => {
                let device = memory.device();
                StepperMode::Full(memory.select(0, index_tensor::<B>(indices, &device)))
            }
        };
        Self { mode, ..self }
    }

    /// Forgets every fed position (upstream mode re-feeds position 0 after the first step).
    fn clear_history(&mut self) {
        if let StepperMode::Cached(state) = &mut self.mode {
            state.clear_history();
        }
    }
}

/// Appends each row's newest map to the history of the row it continues: `origins[i]` is the
/// row (before this step) that row `i` extends, `step[origins[i]]` the map of its new token.
fn extend_histories(
    histories: &mut AttentionHistories,
    step: Option<Vec<Vec<f32>>>,
    origins: &[usize],
) {
    if let (Some(histories), Some(step)) = (histories.as_mut(), step) {
        *histories = origins
            .iter()
            .map(|&row| {
                let mut history = histories.get(row).cloned().unwrap_or_default();
                history.extend_from_slice(&step[row]);
                history
            })
            .collect();
    }
}

fn token_tensor<B: Backend>(
    rows: &[Vec<u32>],
    from: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let n = rows.len();
    let t = rows.first().map_or(0, Vec::len) - from;
    let values: Vec<i64> = rows
        .iter()
        .flat_map(|row| row[from..].iter().map(|&token| token as i64))
        .collect();
    Tensor::from_data(TensorData::new(values, [n, t]), device)
}

fn index_tensor<B: Backend>(indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let values: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(values, [indices.len()]), device)
}

fn to_f32<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("converted to f32")
}

fn to_u32<B: Backend, const D: usize>(tensor: Tensor<B, D, Int>) -> Vec<u32> {
    tensor
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("converted to i64")
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

/// Beam search as specified in the module docs; `memory` is `[B, S, H]`.
fn beam_search<B: Backend>(
    head: &TransformerDecoderTextualHead<B>,
    memory: Tensor<B, 3>,
    config: &DecodingConfig,
    beam_size: usize,
    per_node: usize,
    mode: BeamSearchMode,
) -> (Captions, AttentionHistories) {
    let [batch, _, _] = memory.dims();
    let device = memory.device();
    let sos = config.sos_index as u32;
    let eos = config.eos_index as u32;
    let mut stepper = Stepper::new(head, memory, config);
    let mut histories: AttentionHistories = config.record_attention.then(Vec::new);

    // Step 0: [SOS] → the top `beam_size` tokens start the beams.
    let start = vec![vec![sos]; batch];
    let (logits, attention) = stepper.step(head, &start);
    let log_probs = log_softmax(logits, 1);
    let (top, classes) = log_probs.topk_with_indices(beam_size, 1);
    let top = to_f32(top);
    let classes = to_u32(classes);
    let rows = batch * beam_size;
    let mut beams: Vec<Vec<u32>> = classes.iter().map(|&c| vec![c]).collect();
    let mut scores: Vec<f32> = top;

    // Every beam of an image starts from that image's state.
    let expand: Vec<usize> = (0..rows).map(|row| row / beam_size).collect();
    extend_histories(&mut histories, attention, &expand);
    stepper = stepper.select(&expand);
    if mode == BeamSearchMode::Upstream {
        stepper.clear_history();
    }

    for _ in 1..config.max_steps {
        if beams.iter().all(|beam| beam.last() == Some(&eos)) {
            break;
        }
        let fed: Vec<Vec<u32>> = match mode {
            BeamSearchMode::Upstream => beams.clone(),
            BeamSearchMode::Correct => beams
                .iter()
                .map(|beam| std::iter::once(sos).chain(beam.iter().copied()).collect())
                .collect(),
        };
        let (logits, attention) = stepper.step(head, &fed);
        let log_probs = log_softmax(logits, 1);
        let vocab = log_probs.dims()[1];
        let last: Vec<u32> = beams
            .iter()
            .map(|beam| *beam.last().expect("non-empty beam"))
            .collect();
        let ban = index_tensor::<B>(
            &last.iter().map(|&t| t as usize).collect::<Vec<_>>(),
            &device,
        )
        .one_hot::<2>(vocab)
        .bool();
        let (top, classes) = log_probs
            .mask_fill(ban, -10000.0)
            .topk_with_indices(per_node, 1);
        let top = to_f32(top);
        let classes = to_u32(classes);

        // Host side: 2 candidates per beam, summed, best `beam_size` per image.
        let mut origins = Vec::with_capacity(rows);
        let mut next_beams = Vec::with_capacity(rows);
        let mut next_scores = Vec::with_capacity(rows);
        for image in 0..batch {
            let mut candidates: Vec<(f32, usize, u32)> = Vec::with_capacity(beam_size * per_node);
            for k in 0..beam_size {
                let row = image * beam_size + k;
                for j in 0..per_node {
                    // A finished beam may only continue with EOS, at log-prob 0.
                    let (value, class) = if last[row] == eos {
                        (if j == 0 { 0.0 } else { f32::NEG_INFINITY }, eos)
                    } else {
                        (top[row * per_node + j], classes[row * per_node + j])
                    };
                    candidates.push((scores[row] + value, row, class));
                }
            }
            // Stable: ties keep candidate order.
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
            for &(score, row, class) in candidates.iter().take(beam_size) {
                let mut beam = beams[row].clone();
                beam.push(class);
                next_beams.push(beam);
                next_scores.push(score);
                origins.push(row);
            }
        }
        beams = next_beams;
        scores = next_scores;
        extend_histories(&mut histories, attention, &origins);
        stepper = stepper.select(&origins);
    }

    let best: Vec<usize> = (0..batch).map(|image| image * beam_size).collect();
    let captions = Captions {
        tokens: best.iter().map(|&row| beams[row].clone()).collect(),
        log_probs: Some(best.iter().map(|&row| scores[row]).collect()),
        attention: None,
    };
    let histories = histories.map(|mut histories| {
        best.iter()
            .map(|&row| std::mem::take(&mut histories[row]))
            .collect()
    });
    (captions, histories)
}

/// Nucleus sampling; `memory` is `[B, S, H]`.
fn nucleus_sampling<B: Backend>(
    head: &TransformerDecoderTextualHead<B>,
    memory: Tensor<B, 3>,
    config: &DecodingConfig,
    nucleus_size: f64,
    seed: u64,
) -> (Captions, AttentionHistories) {
    let [batch, _, _] = memory.dims();
    let sos = config.sos_index as u32;
    let eos = config.eos_index as u32;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stepper = Stepper::new(head, memory, config);
    let mut sequences: Vec<Vec<u32>> = vec![vec![sos]; batch];
    let mut histories: AttentionHistories = config.record_attention.then(|| vec![vec![]; batch]);
    let same_rows: Vec<usize> = (0..batch).collect();

    for _ in 0..config.max_steps {
        if sequences.iter().all(|s| s.last() == Some(&eos)) {
            break;
        }
        let (logits, attention) = stepper.step(head, &sequences);
        extend_histories(&mut histories, attention, &same_rows);
        let logits = to_f32(logits);
        let vocab = logits.len() / batch;
        for (row, sequence) in sequences.iter_mut().enumerate() {
            let last = *sequence.last().expect("starts with SOS");
            let sampled = sample_nucleus(
                &logits[row * vocab..(row + 1) * vocab],
                last as usize,
                nucleus_size,
                &mut rng,
            );
            sequence.push(if last == eos { eos } else { sampled as u32 });
        }
    }
    let captions = Captions {
        tokens: sequences.into_iter().map(|s| s[1..].to_vec()).collect(),
        log_probs: None,
        attention: None,
    };
    (captions, histories)
}

/// One draw from the nucleus of `logits`: tokens sorted by logit, removed once the cumulative
/// softmax probability *before* them exceeds `p` (so the first token crossing `p` stays),
/// removed tokens and the last token set to −1e12, then softmax and a categorical draw.
pub(crate) fn sample_nucleus(logits: &[f32], last: usize, p: f64, rng: &mut StdRng) -> usize {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let max = logits[order[0]] as f64;
    let exps: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let total: f64 = exps.iter().sum();

    let mut filtered: Vec<f64> = logits.iter().map(|&l| l as f64).collect();
    let mut cumulative = 0.0;
    for (rank, &token) in order.iter().enumerate() {
        if rank > 0 && cumulative > p {
            filtered[token] = -1e12;
        }
        cumulative += exps[token] / total;
    }
    filtered[last] = -1e12;

    let max = filtered.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = filtered.iter().map(|&l| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut draw = rng.random::<f64>() * total;
    for (token, &weight) in weights.iter().enumerate() {
        if draw < weight {
            return token;
        }
        draw -= weight;
    }
    // Rounding left `draw` at the very end: the last token with any weight.
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleus_keeps_the_first_token_crossing_p_and_bans_the_last() {
        // softmax([3, 2, 1, -5]) ≈ [0.665, 0.245, 0.090, 0.0002]: with p = 0.8 the nucleus is
        // {0, 1} (0 alone is below p, 1 crosses it); with token 0 banned only 1 remains.
        let logits = [3.0, 2.0, 1.0, -5.0];
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            assert_eq!(sample_nucleus(&logits, 0, 0.8, &mut rng), 1);
            let token = sample_nucleus(&logits, 3, 0.8, &mut rng);
            assert!(token == 0 || token == 1);
        }
    }

    #[test]
    fn trimmed_cuts_at_the_first_eos() {
        let captions = Captions {
            tokens: vec![vec![5, 6, 2, 2], vec![7, 2, 8, 2], vec![9, 9, 9, 9]],
            log_probs: None,
            attention: None,
        };
        assert_eq!(
            captions.trimmed(2),
            vec![vec![5, 6], vec![7], vec![9, 9, 9, 9]]
        );
    }
}
