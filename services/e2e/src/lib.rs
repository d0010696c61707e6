//! `corral-e2e`: the product's end-to-end test. It has no library code; the test is
//! `tests/pipeline.rs` (harness in `tests/common/mod.rs`, Segment client driver in
//! `clients/send_calls.py`). See README.md for what it covers and how to run it.
