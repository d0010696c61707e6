//! Delivery lanes: one per destination, each on its own tokio tasks with its own rate limiter,
//! concurrency limit and `Retry-After` pause, so a slow or failing destination never slows the
//! others. A lane only sends; what a response means (done, retry, dead letter) is decided by the
//! processor, inside the transaction, from the [`Outcome`] the lane reports back.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, RateLimiter};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, warn};

use crate::destination::{DestinationType, Secret};
use crate::limit::{parse_retry_after, quota, AdaptiveRate};
use crate::metrics::FanoutMetrics;
use crate::outbox::{Delivery, Slot};
use crate::retry::{classify, Class};

/// How a lane sends, derived from a destination definition and its credential.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneConfig {
    pub dest_key: String,
    pub dest_type: DestinationType,
    pub headers: BTreeMap<String, String>,
    pub credential: Option<Secret>,
    pub rate_limit: Option<u32>,
    pub timeout: Duration,
    pub concurrency: usize,
}

/// One delivery handed to a lane.
#[derive(Debug)]
pub struct Job {
    pub partition: i32,
    pub slot: Slot,
    pub delivery: Delivery,
}

/// What happened to a job.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub partition: i32,
    pub slot: Slot,
    /// `None`: no response (refused, reset, timed out).
    pub status: Option<u16>,
    /// The response body (truncated) or the error text.
    pub detail: String,
    pub retry_after: Option<Duration>,
    pub sent_ms: i64,
}

/// Response bodies kept for dead letters.
const MAX_BODY: usize = 4096;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct LaneState {
    cfg: LaneConfig,
    limiter: Mutex<Option<Arc<DefaultDirectRateLimiter>>>,
    adaptive: Mutex<Option<AdaptiveRate>>,
    paused_until_ms: AtomicI64,
}

impl LaneState {
    fn limiter(&self) -> Option<Arc<DefaultDirectRateLimiter>> {
        self.limiter.lock().ok().and_then(|l| l.clone())
    }

    fn set_rate(&self, rate: u32) {
        if let Ok(mut l) = self.limiter.lock() {
            *l = Some(Arc::new(RateLimiter::direct(quota(rate))));
        }
    }

    fn on_status(
        &self,
        status: Option<u16>,
        retry_after: Option<Duration>,
        metrics: &FanoutMetrics,
    ) {
        let now = now_ms();
        if status == Some(429) {
            metrics
                .throttled
                .with_label_values(&[&self.cfg.dest_key])
                .inc();
            // The whole lane pauses: the destination asked us to slow down, not one profile.
            let pause = retry_after.unwrap_or(Duration::from_secs(1));
            self.paused_until_ms
                .fetch_max(now + pause.as_millis() as i64, Ordering::SeqCst);
            let changed = self.adaptive.lock().ok().and_then(|mut a| {
                a.as_mut()
                    .and_then(|a| a.on_throttled(now).then_some(a.current))
            });
            if let Some(rate) = changed {
                debug!(destination = %self.cfg.dest_key, rate, "429: lowering the rate");
                self.set_rate(rate);
            }
        } else if status.is_some_and(|s| (200..300).contains(&s)) {
            let changed = self.adaptive.lock().ok().and_then(|mut a| {
                a.as_mut()
                    .and_then(|a| a.on_success(now).then_some(a.current))
            });
            if let Some(rate) = changed {
                self.set_rate(rate);
            }
        }
    }
}

struct Lane {
    tx: mpsc::UnboundedSender<Job>,
    cfg: LaneConfig,
}

/// All lanes of one processor, and the channel their outcomes come back on.
pub struct Engine {
    /// `None` only if the OS refused the threads; every job then fails (and is retried).
    rt: Option<tokio::runtime::Runtime>,
    lanes: HashMap<String, Lane>,
    outcomes_tx: Sender<Outcome>,
    outcomes_rx: Receiver<Outcome>,
    metrics: FanoutMetrics,
}

impl Engine {
    pub fn new(metrics: FanoutMetrics, worker_threads: usize) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .thread_name("fanout-lanes")
            .enable_all()
            .build()
            .map_err(|e| tracing::error!(error = %e, "cannot start the delivery runtime"))
            .ok();
        let (outcomes_tx, outcomes_rx) = std::sync::mpsc::channel();
        Self {
            rt,
            lanes: HashMap::new(),
            outcomes_tx,
            outcomes_rx,
            metrics,
        }
    }

    /// Hands a job to its destination's lane, (re)starting the lane when its config changed.
    pub fn submit(&mut self, cfg: &LaneConfig, job: Job) {
        let stale = self
            .lanes
            .get(&cfg.dest_key)
            .is_none_or(|l| l.cfg != *cfg || l.tx.is_closed());
        if stale {
            let (tx, rx) = mpsc::unbounded_channel();
            let state = Arc::new(LaneState {
                cfg: cfg.clone(),
                limiter: Mutex::new(None),
                adaptive: Mutex::new(cfg.rate_limit.map(AdaptiveRate::new)),
                paused_until_ms: AtomicI64::new(0),
            });
            if let Some(rate) = cfg.rate_limit {
                state.set_rate(rate);
            }
            let client = reqwest::Client::builder()
                .timeout(cfg.timeout)
                .pool_max_idle_per_host(cfg.concurrency)
                .build();
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    warn!(destination = %cfg.dest_key, error = %e, "cannot build an HTTP client");
                    reqwest::Client::new()
                }
            };
            if let Some(rt) = &self.rt {
                rt.spawn(run_lane(
                    state,
                    client,
                    rx,
                    self.outcomes_tx.clone(),
                    self.metrics.clone(),
                ));
            }
            // Dropping the old sender lets the old lane finish what it holds, then stop.
            self.lanes.insert(
                cfg.dest_key.clone(),
                Lane {
                    tx,
                    cfg: cfg.clone(),
                },
            );
        }
        if let Some(lane) = self.lanes.get(&cfg.dest_key) {
            self.metrics
                .in_flight
                .with_label_values(&[&cfg.dest_key])
                .inc();
            if let Err(e) = lane.tx.send(job) {
                // The lane task is gone (runtime shutting down): report a no-response outcome so
                // the delivery is retried rather than stuck in flight.
                let job = e.0;
                let _ = self.outcomes_tx.send(Outcome {
                    partition: job.partition,
                    slot: job.slot,
                    status: None,
                    detail: "lane stopped".into(),
                    retry_after: None,
                    sent_ms: now_ms(),
                });
            }
        }
    }

    /// Outcomes reported since the last call.
    pub fn drain(&self) -> Vec<Outcome> {
        self.outcomes_rx.try_iter().collect()
    }
}

async fn run_lane(
    state: Arc<LaneState>,
    client: reqwest::Client,
    mut rx: mpsc::UnboundedReceiver<Job>,
    outcomes: Sender<Outcome>,
    metrics: FanoutMetrics,
) {
    let sem = Arc::new(Semaphore::new(state.cfg.concurrency.max(1)));
    let wait_metric = metrics
        .rate_limit_wait
        .with_label_values(&[&state.cfg.dest_key]);
    while let Some(job) = rx.recv().await {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let started = Instant::now();
        loop {
            let until = state.paused_until_ms.load(Ordering::SeqCst);
            let now = now_ms();
            if now >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis((until - now) as u64)).await;
        }
        // Permits are taken in dispatch order, one at a time, on this task: the limiter sees
        // exactly the request rate the receiver sees.
        if let Some(limiter) = state.limiter() {
            limiter.until_ready().await;
        }
        wait_metric.inc_by(started.elapsed().as_secs_f64());
        let state = state.clone();
        let client = client.clone();
        let outcomes = outcomes.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let sent_ms = now_ms();
            let t = Instant::now();
            let (status, detail, retry_after) = send(&client, &state.cfg, &job.delivery).await;
            metrics.request_duration.observe(t.elapsed().as_secs_f64());
            metrics
                .in_flight
                .with_label_values(&[&state.cfg.dest_key])
                .dec();
            if classify(status) == Class::Delivered {
                metrics
                    .latency
                    .with_label_values(&[&state.cfg.dest_key])
                    .observe(((sent_ms - job.delivery.source_ms).max(0) as f64) / 1000.0);
            }
            state.on_status(status, retry_after, &metrics);
            drop(permit);
            let _ = outcomes.send(Outcome {
                partition: job.partition,
                slot: job.slot,
                status,
                detail,
                retry_after,
                sent_ms,
            });
        });
    }
}

/// HMAC-SHA256 of the body, hex: the `X-Signature` header of signed webhooks.
pub fn signature(secret: &str, body: &[u8]) -> String {
    match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            crate::payload::hex(&mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this arm is unreachable in practice.
        Err(_) => String::new(),
    }
}

async fn send(
    client: &reqwest::Client,
    cfg: &LaneConfig,
    d: &Delivery,
) -> (Option<u16>, String, Option<Duration>) {
    let body = match serde_json::to_vec(&d.body) {
        Ok(b) => b,
        Err(e) => return (None, format!("encoding the body: {e}"), None),
    };
    let method = match d.method.as_deref() {
        None => reqwest::Method::POST,
        Some(m) => match reqwest::Method::from_bytes(m.as_bytes()) {
            Ok(m) => m,
            Err(e) => return (None, format!("HTTP method {m:?}: {e}"), None),
        },
    };
    // A request without a body (Iterable's DELETE) sends none.
    let body = if d.body.is_null() { Vec::new() } else { body };
    let mut req = client
        .request(method, &d.url)
        .header("content-type", "application/json")
        .header("idempotency-key", &d.message_id)
        .header("x-corral-message-id", &d.message_id);
    for (k, v) in &cfg.headers {
        req = req.header(k, v);
    }
    if let Some(secret) = &cfg.credential {
        let s = secret.expose();
        req = match cfg.dest_type {
            DestinationType::Webhook => {
                req.header("x-signature", format!("sha256={}", signature(s, &body)))
            }
            // The Tracking API takes the write key as the Basic username, empty password.
            DestinationType::Segment => req.basic_auth(s, Some("")),
            DestinationType::Iterable => req.header("api-key", s),
            DestinationType::Braze | DestinationType::ListHttp => req.bearer_auth(s),
            DestinationType::Kafka => req,
        };
    }
    match req.body(body).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now_ms()));
            let text = resp.text().await.unwrap_or_default();
            let detail = if text.len() > MAX_BODY {
                let mut cut = MAX_BODY;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text[..cut].to_string()
            } else {
                text
            };
            (Some(status), detail, retry_after)
        }
        // without_url: URLs can carry tokens in their query.
        Err(e) => (None, e.without_url().to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_signature_is_rfc4231_compatible() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
