//! The one error type of the codec. Messages name the topic and say what was wrong, because they
//! end up verbatim in dead-letter records and logs.

/// Why encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are shorter than the 10-byte single-object header.
    #[error("{topic}: truncated header: single-object encoding needs 10 bytes (C3 01 + 8-byte fingerprint), got {len}")]
    TruncatedHeader { topic: &'static str, len: usize },

    /// The first two bytes are not the single-object marker.
    #[error("{topic}: bad magic: expected single-object marker C3 01, found {found}")]
    BadMagic { topic: &'static str, found: String },

    /// The fingerprint names no schema version this build knows for the topic.
    #[error("{topic}: unknown schema fingerprint {fingerprint} (CRC-64-AVRO, little-endian hex); known: {known}")]
    UnknownFingerprint {
        topic: &'static str,
        fingerprint: String,
        known: String,
    },

    /// The datum ended before the writer schema said it would.
    #[error("{topic}: truncated datum (writer schema {fingerprint}): {detail}")]
    TruncatedDatum {
        topic: &'static str,
        fingerprint: String,
        detail: String,
    },

    /// The datum is not valid for the writer schema (bad union index, bad length, bad UTF-8, ...).
    #[error("{topic}: malformed datum (writer schema {fingerprint}): {detail}")]
    MalformedDatum {
        topic: &'static str,
        fingerprint: String,
        detail: String,
    },

    /// Bytes were left over after the datum: the writer used another schema than its header says.
    #[error("{topic}: {count} trailing bytes after the datum (writer schema {fingerprint})")]
    TrailingBytes {
        topic: &'static str,
        fingerprint: String,
        count: usize,
    },

    /// The writer's data cannot be read as the current schema, or a decoded value does not have
    /// the shape the current schema promises.
    #[error("{topic}: schema mismatch: {detail}")]
    SchemaMismatch { topic: &'static str, detail: String },

    /// A Segment JSON payload cannot become a message (not an object, unknown type, no messageId).
    #[error("invalid Segment message: {0}")]
    InvalidMessage(String),

    /// A value cannot be encoded (e.g. a record whose nested space_id disagrees).
    #[error("{topic}: cannot encode: {detail}")]
    Encode { topic: &'static str, detail: String },

    /// A schema file embedded in this build does not parse; a build defect, not a data problem.
    #[error("{topic}: embedded schema is invalid: {detail}")]
    Schema { topic: String, detail: String },
}

impl CodecError {
    /// A short machine-readable reason, for `DeadLetter::reason` and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::TruncatedHeader { .. } => "truncated_header",
            CodecError::BadMagic { .. } => "bad_magic",
            CodecError::UnknownFingerprint { .. } => "unknown_fingerprint",
            CodecError::TruncatedDatum { .. } => "truncated_datum",
            CodecError::MalformedDatum { .. } => "malformed_datum",
            CodecError::TrailingBytes { .. } => "trailing_bytes",
            CodecError::SchemaMismatch { .. } => "schema_mismatch",
            CodecError::InvalidMessage(_) => "invalid_message",
            CodecError::Encode { .. } => "encode_error",
            CodecError::Schema { .. } => "invalid_schema",
        }
    }
}
