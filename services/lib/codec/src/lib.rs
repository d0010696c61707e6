//! Corral's wire format: the Avro records of every topic, framed as Avro single-object encoding
//! (`C3 01` + 8-byte little-endian CRC-64-AVRO fingerprint + binary datum).
//!
//! Schemas live in `schemas/<topic>.avsc` at the repository root and are compiled in. Decoding
//! reads the fingerprint, picks the writer schema (the current one or any version kept in
//! `schemas/history/`) and resolves the data to the current schema. Free-form Segment parts
//! (properties, traits, context, integrations) are the recursive `corral.v1.JsonValue` record;
//! `docs/wire-format.md` explains why and gives the benchmark.
//!
//! ```
//! use corral_codec::{AvroRecord, DeadLetter};
//! let dl = DeadLetter {
//!     space_id: "s1".into(), service: "validator".into(), origin_topic: "corral.events.raw".into(),
//!     origin_partition: 3, origin_offset: 42, key: Some(b"m-1".to_vec()), value: None,
//!     error: "bad magic".into(), reason: "bad_magic".into(), failed_at_ms: 1_700_000_000_000,
//! };
//! let bytes = dl.encode()?;
//! assert_eq!(&bytes[..2], &[0xC3, 0x01]);
//! assert_eq!(DeadLetter::decode(&bytes)?, dl);
//! # Ok::<(), corral_codec::CodecError>(())
//! ```

mod binary;
mod error;
pub mod history;
mod json;
mod read;
mod records;
mod registry;
pub mod routing;
mod segment;

pub use error::CodecError;
pub use json::decode_to_json;
pub use records::{
    AvroRecord, BlockedEvent, DeadLetter, Definition, ExternalId, MembershipChange,
    MembershipChangeKind, MessageType, ProfileMerge, ProtocolsAnnotation, RawEvent, ResolvedEvent,
    SegmentMessage, TraitChange, ValidEvent, Violation, ViolationDetail,
};
pub use registry::{
    fingerprint, fingerprint_of, history, parsing_canonical_form, peek_fingerprint, schema,
    schema_json, HEADER_LEN, MAGIC, TOPICS,
};

/// Low-level Avro binary writers, exposed only for the benchmark that compares representations.
#[doc(hidden)]
pub mod __bench {
    pub use crate::binary::*;
    pub use crate::read::Reader;
}
