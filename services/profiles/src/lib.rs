//! # corral-profiles
//!
//! Segment's Profile API and an audience admin API on one listener, so clients never need to
//! know which service holds what:
//!
//! - [`api`]: `GET /v1/spaces/{space}/collections/{users|accounts}/profiles/{id}/{what}`
//!   (traits, external ids, events, metadata, links) with Segment's parameters, shapes, pagination and error bodies;
//! - [`admin`]: create, list, get, update and delete audiences and computed traits (Segment's
//!   Public API shapes), previews ([`preview`]) and CSV exports of members;
//! - [`regulations`]: privacy regulations (suppress, delete, unsuppress) filed and followed
//!   as Segment's Public API does, through the same code as `corralctl privacy`;
//! - [`auth`]: the space tokens of `corralctl tokens`, checked on every route that names a space.
//!
//! Guarantees: answers come from [`store::ProfileStore`], a RocksDB folder holding replicas of
//! identity's graph changelog and compute's profiles changelog (read_committed, so only
//! committed state shows) and an index of `events.resolved` (the newest events of each profile
//! and account, accounts and user↔account links from group calls). Nothing is kept per profile
//! in memory. The events index follows the deletion records on `profiles.merges`: a deleted
//! profile's life (and that of the profiles merged into it before) is erased and never indexed
//! again, so a person who comes back shows only the new life. Until each input has been read to
//! its end once, every profile read answers 503 (never a false 404). Admin writes go through `corral_ops::audiences`, exactly as
//! `corralctl audiences apply` writes. See docs/profile-api.md.

pub mod admin;
pub mod api;
pub mod auth;
pub mod defs;
pub mod metrics;
pub mod preview;
pub mod regulations;
pub mod store;
