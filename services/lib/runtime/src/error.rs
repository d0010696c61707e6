//! One error classifier for every Kafka call on the transactional path (retry a
//! transient error, abort and rewind to the last commit on an abortable one, rebuild the clients on a
//! fatal one).

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::store::StoreError;

/// What the stream thread does about a Kafka error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnAction {
    /// Transient: repeat the same call after a short pause.
    Retry,
    /// The transaction cannot commit: abort it, drop the overlay, rewind to committed offsets.
    Abort,
    /// The producer is fenced or in a fatal state: tear down producer and consumer and rejoin.
    Fatal,
}

/// Classifies an error from a transactional producer or group consumer call.
pub fn classify(err: &KafkaError) -> TxnAction {
    match err {
        KafkaError::Transaction(e) => {
            if e.is_fatal() {
                TxnAction::Fatal
            } else if e.txn_requires_abort() {
                TxnAction::Abort
            } else if e.is_retriable() {
                TxnAction::Retry
            } else {
                match e.code() {
                    RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::Fenced => TxnAction::Fatal,
                    _ => TxnAction::Abort,
                }
            }
        }
        // commit_transaction on a BaseProducer flushes first; a failed flush means undelivered
        // records, which the transaction must not commit without.
        KafkaError::Flush(_) => TxnAction::Abort,
        other => match other.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::Fatal,
            ) => TxnAction::Fatal,
            _ => TxnAction::Abort,
        },
    }
}

/// Errors that stop a stream thread's current generation (clients are rebuilt) or the service.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid runtime configuration: {0}")]
    Config(String),
    #[error("Kafka client error during {during}: {source}")]
    Kafka {
        during: &'static str,
        source: KafkaError,
    },
    #[error("transaction failed fatally during {during}: {source}; the producer is rebuilt and the group rejoined")]
    Fatal {
        during: &'static str,
        source: KafkaError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("processor failed: {0}")]
    Processor(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("topic administration failed: {0}")]
    Admin(String),
}

impl RuntimeError {
    /// Whether rebuilding the Kafka clients may cure it (as opposed to a configuration problem).
    pub fn is_rebuildable(&self) -> bool {
        matches!(
            self,
            RuntimeError::Fatal { .. } | RuntimeError::Kafka { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_failures_abort_and_fencing_is_fatal() {
        assert_eq!(
            classify(&KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut)),
            TxnAction::Abort
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::ProducerFenced
            )),
            TxnAction::Fatal
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::BrokerTransportFailure
            )),
            TxnAction::Abort
        );
    }
}
