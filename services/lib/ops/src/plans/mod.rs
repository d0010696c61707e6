//! Tracking plans (Segment Protocols): the file format ([`plan`]), the evaluation the validator
//! runs on every message ([`engine`], pure), a dry run of one event ([`check`]), and the
//! operator actions on Kafka ([`kafka`]: `plans apply`, `replay blocked`).

pub mod check;
pub mod engine;
pub mod kafka;
pub mod plan;
