//! A minimal reader and writer for SentencePiece's `ModelProto` (`sentencepiece_model.proto`).
//!
//! Only the fields a BPE encoder needs are decoded; every other field is skipped by wire type.
//! Field numbers (checked against the `sentencepiece` 0.2.x Python package's descriptor):
//!
//! | message | field | number | type |
//! |---|---|---|---|
//! | ModelProto | pieces | 1 | repeated SentencePiece |
//! | ModelProto | trainer_spec | 2 | TrainerSpec |
//! | ModelProto | normalizer_spec | 3 | NormalizerSpec |
//! | SentencePiece | piece / score / type | 1 / 2 / 3 | string / float / enum (NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, BYTE=6, UNUSED=5) |
//! | TrainerSpec | model_type | 3 | enum (UNIGRAM=1, BPE=2, WORD=3, CHAR=4) |
//! | TrainerSpec | treat_whitespace_as_suffix / byte_fallback | 24 / 35 | bool |
//! | TrainerSpec | unk_id / unk_surface | 40 / 44 | int32 / string |
//! | NormalizerSpec | name / precompiled_charsmap | 1 / 2 | string / bytes |
//! | NormalizerSpec | add_dummy_prefix / remove_extra_whitespaces / escape_whitespaces | 3 / 4 / 5 | bool (default true) |

/// Kind of a vocabulary entry (SentencePiece's `SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PieceKind {
    /// An ordinary piece.
    Normal,
    /// The unknown piece (`<unk>`, id 0 in VirTex).
    Unknown,
    /// A control symbol (`[SOS]`, `[EOS]`, `[MASK]`): never produced by encoding, decoded to "".
    Control,
    /// A user-defined symbol (not used by VirTex; rejected on load).
    UserDefined,
    /// A byte-fallback piece (not used by VirTex; rejected on load).
    Byte,
    /// An unused piece.
    Unused,
}

impl PieceKind {
    fn from_proto(value: u64) -> Option<Self> {
        Some(match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }

    fn to_proto(self) -> u64 {
        match self {
            Self::Normal => 1,
            Self::Unknown => 2,
            Self::Control => 3,
            Self::UserDefined => 4,
            Self::Unused => 5,
            Self::Byte => 6,
        }
    }
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProtoPiece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// The parts of a `ModelProto` we use.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelProto {
    pub pieces: Vec<ProtoPiece>,
    pub model_type: u64,
    pub unk_id: i64,
    pub unk_surface: Option<String>,
    pub byte_fallback: bool,
    pub treat_whitespace_as_suffix: bool,
    pub normalizer_name: String,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

pub(crate) const MODEL_TYPE_BPE: u64 = 2;

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .data
                .get(self.pos)
                .ok_or_else(|| format!("truncated varint at byte {}", self.pos))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "field of {len} bytes at byte {} runs past the end ({} bytes)",
                    self.pos,
                    self.data.len()
                )
            })?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Reads one field; returns `(number, value)`.
    fn field(&mut self) -> Result<(u64, Value<'a>), String> {
        let key = self.varint()?;
        let number = key >> 3;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.bytes(8)?;
                Value::Fixed64
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| format!("length {len} too large"))?;
                Value::Bytes(self.bytes(len)?)
            }
            5 => Value::Fixed32(self.bytes(4)?),
            other => return Err(format!("unsupported wire type {other} for field {number}")),
        };
        Ok((number, value))
    }
}

enum Value<'a> {
    Varint(u64),
    /// Skipped: no field we read is a 64-bit fixed value.
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(&'a [u8]),
}

fn as_bytes<'a>(value: Value<'a>, what: &str) -> Result<&'a [u8], String> {
    match value {
        Value::Bytes(b) => Ok(b),
        _ => Err(format!("{what}: expected a length-delimited field")),
    }
}

fn as_varint(value: Value<'_>, what: &str) -> Result<u64, String> {
    match value {
        Value::Varint(v) => Ok(v),
        _ => Err(format!("{what}: expected a varint field")),
    }
}

fn as_string(value: Value<'_>, what: &str) -> Result<String, String> {
    let bytes = as_bytes(value, what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what}: not valid UTF-8"))
}

fn parse_piece(data: &[u8]) -> Result<ProtoPiece, String> {
    let mut reader = Reader::new(data);
    let mut piece = ProtoPiece {
        piece: String::new(),
        score: 0.0,
        kind: PieceKind::Normal,
    };
    while !reader.done() {
        match reader.field()? {
            (1, v) => piece.piece = as_string(v, "SentencePiece.piece")?,
            (2, Value::Fixed32(b)) => piece.score = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            (2, _) => return Err("SentencePiece.score: expected a float".into()),
            (3, v) => {
                let t = as_varint(v, "SentencePiece.type")?;
                piece.kind = PieceKind::from_proto(t)
                    .ok_or_else(|| format!("SentencePiece.type: unknown value {t}"))?;
            }
            _ => {}
        }
    }
    Ok(piece)
}

/// Parses a serialized `ModelProto`.
pub(crate) fn parse_model(data: &[u8]) -> Result<ModelProto, String> {
    let mut model = ModelProto {
        pieces: Vec::new(),
        // TrainerSpec defaults (sentencepiece_model.proto).
        model_type: 1,
        unk_id: 0,
        unk_surface: None,
        byte_fallback: false,
        treat_whitespace_as_suffix: false,
        normalizer_name: String::new(),
        precompiled_charsmap: Vec::new(),
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
        escape_whitespaces: true,
    };
    let mut reader = Reader::new(data);
    while !reader.done() {
        match reader.field()? {
            (1, v) => {
                let bytes = as_bytes(v, "ModelProto.pieces")?;
                model.pieces.push(parse_piece(bytes)?);
            }
            (2, v) => {
                let mut r = Reader::new(as_bytes(v, "ModelProto.trainer_spec")?);
                while !r.done() {
                    match r.field()? {
                        (3, v) => model.model_type = as_varint(v, "TrainerSpec.model_type")?,
                        (24, v) => {
                            model.treat_whitespace_as_suffix =
                                as_varint(v, "TrainerSpec.treat_whitespace_as_suffix")? != 0
                        }
                        (35, v) => {
                            model.byte_fallback = as_varint(v, "TrainerSpec.byte_fallback")? != 0
                        }
                        (40, v) => model.unk_id = as_varint(v, "TrainerSpec.unk_id")? as i32 as i64,
                        (44, v) => {
                            model.unk_surface = Some(as_string(v, "TrainerSpec.unk_surface")?)
                        }
                        _ => {}
                    }
                }
            }
            (3, v) => {
                let mut r = Reader::new(as_bytes(v, "ModelProto.normalizer_spec")?);
                while !r.done() {
                    match r.field()? {
                        (1, v) => model.normalizer_name = as_string(v, "NormalizerSpec.name")?,
                        (2, v) => {
                            model.precompiled_charsmap =
                                as_bytes(v, "NormalizerSpec.precompiled_charsmap")?.to_vec()
                        }
                        (3, v) => {
                            model.add_dummy_prefix =
                                as_varint(v, "NormalizerSpec.add_dummy_prefix")? != 0
                        }
                        (4, v) => {
                            model.remove_extra_whitespaces =
                                as_varint(v, "NormalizerSpec.remove_extra_whitespaces")? != 0
                        }
                        (5, v) => {
                            model.escape_whitespaces =
                                as_varint(v, "NormalizerSpec.escape_whitespaces")? != 0
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if model.pieces.is_empty() {
        return Err("the model has no pieces (is this a SentencePiece .model file?)".into());
    }
    Ok(model)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_key(out: &mut Vec<u8>, number: u64, wire: u64) {
    put_varint(out, (number << 3) | wire);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_key(out, number, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_bool(out: &mut Vec<u8>, number: u64, value: bool) {
    put_key(out, number, 0);
    put_varint(out, u64::from(value));
}

/// Serializes a `ModelProto` that the `sentencepiece` library loads (BPE, with the given pieces
/// and normaliser; trainer fields as upstream VirTex sets them).
pub(crate) fn write_model(model: &ModelProto) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in &model.pieces {
        let mut p = Vec::new();
        put_bytes(&mut p, 1, piece.piece.as_bytes());
        put_key(&mut p, 2, 5);
        p.extend_from_slice(&piece.score.to_le_bytes());
        if piece.kind != PieceKind::Normal {
            put_key(&mut p, 3, 0);
            put_varint(&mut p, piece.kind.to_proto());
        }
        put_bytes(&mut out, 1, &p);
    }
    let mut trainer = Vec::new();
    put_key(&mut trainer, 3, 0);
    put_varint(&mut trainer, model.model_type);
    put_key(&mut trainer, 4, 0);
    put_varint(&mut trainer, model.pieces.len() as u64);
    put_bool(&mut trainer, 24, model.treat_whitespace_as_suffix);
    put_bool(&mut trainer, 35, model.byte_fallback);
    put_key(&mut trainer, 40, 0);
    put_varint(&mut trainer, model.unk_id as u64);
    // bos_id = eos_id = pad_id = -1, as upstream trains (int32 -1 is a 10-byte varint).
    for number in [41, 42, 43] {
        put_key(&mut trainer, number, 0);
        put_varint(&mut trainer, u64::MAX);
    }
    if let Some(surface) = &model.unk_surface {
        put_bytes(&mut trainer, 44, surface.as_bytes());
    }
    put_bytes(&mut out, 2, &trainer);
    let mut normalizer = Vec::new();
    put_bytes(&mut normalizer, 1, model.normalizer_name.as_bytes());
    if !model.precompiled_charsmap.is_empty() {
        put_bytes(&mut normalizer, 2, &model.precompiled_charsmap);
    }
    put_bool(&mut normalizer, 3, model.add_dummy_prefix);
    put_bool(&mut normalizer, 4, model.remove_extra_whitespaces);
    put_bool(&mut normalizer, 5, model.escape_whitespaces);
    put_bytes(&mut out, 3, &normalizer);
    out
}
