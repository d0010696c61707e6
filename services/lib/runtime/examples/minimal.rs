//! A minimal Corral service (explained in docs/runtime.md): counts the records of `events.valid`
//! per key, exactly once, and emits each new count to `{prefix}example.counts`.
//! `cargo run -p corral-runtime --example minimal -- --state-dir /tmp/minimal`

use clap::Parser;
use corral_codec::ValidEvent;
use corral_runtime::topics::CleanupPolicy;
use corral_runtime::{InputRecord, ProcessContext, ProcessError, Processor};
use corral_runtime::{RuntimeArgs, Service, Store};

const COUNTS: Store = Store::named("counts");

struct Counter;

impl Processor for Counter {
    fn process(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        record: &InputRecord<'_>,
    ) -> Result<(), ProcessError> {
        let key = record
            .key
            .ok_or_else(|| ProcessError::bad_input("missing_key", "the record has no key"))?;
        let before: u64 = match ctx.get(COUNTS, key)? {
            Some(v) => String::from_utf8_lossy(&v)
                .parse()
                .map_err(|_| ProcessError::Fatal("a stored count is not a number".into()))?,
            None => 0,
        };
        let count = (before + 1).to_string().into_bytes();
        ctx.put(COUNTS, key.to_vec(), count.clone());
        let output = ctx.topic("example.counts");
        ctx.emit(&output, Some(key.to_vec()), Some(count));
        Ok(())
    }
}

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: RuntimeArgs,
}

fn main() -> anyhow::Result<()> {
    let mut svc = Service::start("example-counter", Args::parse().common)?;
    let input = svc.topics().of::<ValidEvent>();
    let output = svc.topics().name("example.counts");
    svc.ensure_topic_like(&output, &input, CleanupPolicy::Delete, None)?;
    let mut cfg = svc.config();
    cfg.input_topics = vec![input];
    cfg.stores = vec![COUNTS.into()];
    let runtime = svc.runtime(cfg)?;
    svc.add(runtime, || Counter);
    Ok(svc.run()?)
}
