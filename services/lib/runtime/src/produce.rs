//! Producing outside a stream thread's transaction loop (replays, tools) and inside it: a send
//! that waits while librdkafka's queue is full instead of failing.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

/// Queues `record`; while the local queue is full, serves a delivery report, waits `backoff` and
/// tries again. Other errors are returned. (Not `poll(backoff)`: rust-rdkafka's poll turns a
/// remaining time under 1 ms into a non-blocking poll and loops until the time is up, so it spins.)
pub fn send_waiting<C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
    backoff: Duration,
) -> Result<(), KafkaError>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::ZERO);
                std::thread::sleep(backoff);
            }
            Err((e, _)) => return Err(e),
        }
    }
}
