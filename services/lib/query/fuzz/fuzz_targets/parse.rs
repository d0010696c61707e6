#![no_main]
//! Parser (and the rest of the pipeline) on arbitrary bytes; see `corral_query::fuzz::harness`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corral_query::fuzz::harness(data);
});
