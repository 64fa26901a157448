//! The worker: keeps one long-poll `take` outstanding, handles requests concurrently (in
//! arrival order, bounded), and delivers answers in batches, retrying transport failures
//! with backoff. It never forwards a request twice: a request already claimed before this
//! worker started is answered "indeterminate" if it was unsafe.

mod check;
mod in_flight;
mod respond;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge_protocol::codec::envelope_limit;
use bridge_protocol::ops::MAX_REPLY_ITEMS;
use bridge_protocol::{shown, shown_error};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::audit::AuditLog;
use crate::policy::HostPolicy;
use crate::proxy::Upstream;
use crate::transport::{
    PutItem, PutOutcome, TakeOptions, TakeProblem, Taken, Transport, TransportError,
};

pub use check::{check, Checked, Refusal};

/// What the worker decided about one request (the audit log's `decision`, and traces').
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Passed the policy and was sent upstream; the upstream's answer goes back.
    Forwarded,
    /// Well formed, but the policy does not allow it (route, method, header, size).
    Denied,
    /// The request file is malformed (not queue_v1, bad body, bad path): never forwarded.
    Invalid,
    /// It may have reached the upstream but no answer came (or an earlier worker claimed
    /// it): the agent is told the outcome is unknown, not to retry blindly.
    Indeterminate,
    /// Forwarding failed before the request left the host: safe for the agent to retry.
    Failed,
    /// The worker is stopping: answered 503 without forwarding.
    Stopping,
}

impl Decision {
    /// The lower-case name, as the audit log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Forwarded => "forwarded",
            Decision::Denied => "denied",
            Decision::Invalid => "invalid",
            Decision::Indeterminate => "indeterminate",
            Decision::Failed => "failed",
            Decision::Stopping => "stopping",
        }
    }
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Requests forwarded at once.
    pub concurrency: usize,
    /// How long one `take` waits in the sandbox for a request (the long poll).
    pub take_wait: Duration,
    /// Bytes of request files one `take` returns at most.
    pub max_batch_bytes: usize,
    /// First backoff after a failed exec; doubles up to `retry_cap`.
    pub retry_start: Duration,
    /// Longest backoff between retries.
    pub retry_cap: Duration,
    /// At stop, how long in-flight requests may still finish.
    pub drain_timeout: Duration,
    /// How long a caller may still be waiting; older answers are given up.
    pub response_timeout: Duration,
    /// Where every decision is appended as a JSON line, if anywhere.
    pub audit: Option<AuditLog>,
    /// Where requests, latencies and errors are counted, if anywhere.
    pub metrics: Option<crate::metrics::Metrics>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            take_wait: Duration::from_secs(10),
            max_batch_bytes: 16 * 1024 * 1024,
            retry_start: Duration::from_millis(50),
            retry_cap: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            audit: None,
            metrics: None,
        }
    }
}

/// Counters, for tests, benchmarks and logs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests taken from the queue.
    pub taken: AtomicU64,
    /// Requests sent upstream.
    pub forwarded: AtomicU64,
    /// Requests answered without forwarding (denied, invalid, stopping).
    pub refused: AtomicU64,
    /// Answers written while their caller waited.
    pub delivered: AtomicU64,
    /// Answers whose caller had gone.
    pub caller_gone: AtomicU64,
    /// Failed takes and delivers (each retried with backoff).
    pub transport_errors: AtomicU64,
}

/// Everything the tasks share.
#[derive(Debug)]
struct Shared {
    transport: Arc<dyn Transport>,
    upstream: Upstream,
    policy: Arc<HostPolicy>,
    config: WorkerConfig,
    stats: Arc<Stats>,
    /// Ids taken and not yet delivered.
    in_flight: in_flight::InFlight,
}

/// Starts workers.
#[derive(Debug)]
pub struct Worker;

/// A running worker.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<Stats>,
    transport: Arc<dyn Transport>,
}

impl Worker {
    /// Starts serving `transport`'s queue.
    pub fn spawn(
        transport: Arc<dyn Transport>,
        upstream: Upstream,
        policy: Arc<HostPolicy>,
        config: WorkerConfig,
    ) -> WorkerHandle {
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            transport: transport.clone(),
            upstream,
            policy,
            config,
            stats: stats.clone(),
            in_flight: in_flight::InFlight::default(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(shared, stopped));
        WorkerHandle {
            stop,
            task,
            stats,
            transport,
        }
    }
}

impl WorkerHandle {
    /// The worker's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Execs (or calls) the transport has made so far.
    pub fn exec_count(&self) -> u64 {
        self.transport.exec_count()
    }

    /// Ends the worker at once, as a crash would: nothing is drained or answered.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Stops: in-flight requests get `drain_timeout` to finish, everything still queued
    /// is answered 503 (or indeterminate), and the answers are delivered.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %shown_error(&e), "the worker task failed");
        }
    }
}

/// The worker's life: take and handle until stopped, then drain and sweep.
async fn run(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let (deliveries, queue) = mpsc::unbounded_channel::<Pending>();
    let deliverer = tokio::spawn(deliver_loop(shared.clone(), queue));
    let permits = Arc::new(Semaphore::new(shared.config.concurrency.max(1)));
    let mut handlers = JoinSet::new();
    let mut backoff = Backoff::new(&shared.config);
    // At start, claims may be an earlier worker's: unsafe ones are never re-sent.
    let mut recovering = true;
    // After a failed take, claims it made may have been lost with its output: they are
    // ours (nothing else runs on this queue), so they are looked for once and forwarded.
    let mut lost_claims = false;
    while !*stopped.borrow() {
        let opts = take_options(&shared, recovering || lost_claims);
        if opts.include_claimed {
            shared.in_flight.recovery_sent();
        }
        let taken = tokio::select! {
            taken = shared.transport.take(opts) => taken,
            _ = stopped.changed() => break,
        };
        if let Some(m) = &shared.config.metrics {
            m.observe_execs(shared.transport.exec_count());
        }
        match taken {
            Ok(batch) => {
                backoff.reset();
                for incoming in batch {
                    let mut incoming = within_envelope(incoming, opts.envelope_limit);
                    if !recovering {
                        incoming.previously_claimed = false;
                    }
                    let Some(incoming) = shared.admit(incoming) else {
                        continue;
                    };
                    let permit = tokio::select! {
                        permit = permits.clone().acquire_owned() => permit,
                        _ = stopped.changed() => break,
                    };
                    let Ok(permit) = permit else { break };
                    let (shared, deliveries) = (shared.clone(), deliveries.clone());
                    handlers.spawn(async move {
                        let answer = respond::answer(&shared, incoming).await;
                        let _ = deliveries.send(answer);
                        drop(permit);
                    });
                }
                recovering = false;
                lost_claims = false;
                shared.in_flight.recovery_done();
                while handlers.try_join_next().is_some() {}
            }
            Err(e) => {
                shared.in_flight.recovery_done();
                lost_claims = true;
                let wait = shared.transport_failed("take", &e, &mut backoff);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped.changed() => break,
                }
            }
        }
    }
    drain(&shared, &mut handlers).await;
    sweep(&shared, &deliveries).await;
    drop(deliveries);
    let _ = deliverer.await;
}

fn take_options(shared: &Shared, recovering: bool) -> TakeOptions {
    TakeOptions {
        // Recovery looks once without waiting (claimed requests in flight would otherwise
        // end every long poll at once).
        wait: if recovering {
            Duration::ZERO
        } else {
            shared.config.take_wait
        },
        max_batch_bytes: shared.config.max_batch_bytes,
        envelope_limit: envelope_limit(shared.policy.max_body_bytes),
        include_claimed: recovering,
    }
}

/// Lets in-flight requests finish for `drain_timeout`, then abandons the rest (their
/// requests are claimed, so the sweep answers them).
async fn drain(shared: &Shared, handlers: &mut JoinSet<()>) {
    let deadline = tokio::time::sleep(shared.config.drain_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = handlers.join_next() => if next.is_none() { return },
            () = &mut deadline => break,
        }
    }
    tracing::warn!(
        left = handlers.len(),
        "drain time is over; abandoning in-flight requests"
    );
    handlers.abort_all();
    while handlers.join_next().await.is_some() {}
    shared.in_flight.clear();
}

/// Answers everything still queued, so no caller hangs: 503, or indeterminate for an
/// unsafe request that may already have been forwarded.
async fn sweep(shared: &Shared, deliveries: &mpsc::UnboundedSender<Pending>) {
    let opts = TakeOptions {
        wait: Duration::ZERO,
        include_claimed: true,
        ..take_options(shared, true)
    };
    let mut backoff = Backoff::new(&shared.config);
    for _ in 0..3 {
        match shared.transport.take(opts).await {
            Ok(batch) => {
                for incoming in batch {
                    let incoming = within_envelope(incoming, opts.envelope_limit);
                    let _ = deliveries.send(respond::stopping(shared, &incoming));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %shown_error(&e), "could not list what is still queued");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// An answer waiting to be delivered.
#[derive(Debug)]
pub(crate) struct Pending {
    outgoing: PutItem,
    since: Instant,
}

/// Delivers answers in batches (everything ready goes in one call), up to the
/// transport's `concurrent_delivers` calls at once; each batch is retried with backoff and
/// an answer is given up only when its caller cannot be waiting any more.
async fn deliver_loop(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(
        shared.transport.concurrent_delivers().max(1),
    ));
    let mut calls = JoinSet::new();
    while let Some(first) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        // Gathered once a slot is free, so answers ready meanwhile share this call.
        // No more than one reply may carry (the sandbox answers a put item by item).
        let mut batch = vec![first];
        while batch.len() < MAX_REPLY_ITEMS {
            let Ok(p) = queue.try_recv() else { break };
            batch.push(p);
        }
        calls.spawn(deliver_batch(shared.clone(), batch, slot));
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

async fn deliver_batch(
    shared: Arc<Shared>,
    mut batch: Vec<Pending>,
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    let give_up_after = shared.config.response_timeout + Duration::from_secs(5);
    let mut backoff = Backoff::new(&shared.config);
    loop {
        batch.retain(|p| {
            let keep = p.since.elapsed() < give_up_after;
            if !keep {
                tracing::error!(id = %shown(&p.outgoing.id), "giving up delivering an answer: its caller has given up");
                shared.finish(&p.outgoing.id);
            }
            keep
        });
        if batch.is_empty() {
            return;
        }
        let outgoing: Vec<PutItem> = batch.iter().map(|p| p.outgoing.clone()).collect();
        let wait = match shared.transport.deliver(outgoing).await {
            Ok(results) => {
                let failed = shared.record_deliveries(results);
                batch.retain(|p| failed.contains(&p.outgoing.id));
                if batch.is_empty() {
                    return;
                }
                backoff.next()
            }
            Err(e) => shared.transport_failed("deliver", &e, &mut backoff),
        };
        tokio::time::sleep(wait).await;
    }
}

impl Shared {
    /// Counts and logs a failed transport call; returns how long to wait before the retry.
    fn transport_failed(&self, what: &str, e: &TransportError, backoff: &mut Backoff) -> Duration {
        self.stats.transport_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.config.metrics {
            m.transport_error();
        }
        let wait = backoff.next();
        tracing::warn!(error = %shown_error(e), retry_in_ms = wait.as_millis() as u64, "{what} failed");
        wait
    }

    /// Marks a taken request in flight; `None` if it already is.
    fn admit(&self, incoming: Taken) -> Option<Taken> {
        if !self.in_flight.admit(&incoming.id) {
            tracing::debug!(id = %shown(&incoming.id), "already in hand or answered; not taken again");
            return None;
        }
        self.stats.taken.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.config.metrics {
            m.taken();
        }
        Some(incoming)
    }

    fn finish(&self, id: &str) {
        if self.in_flight.finish(id) {
            if let Some(m) = &self.config.metrics {
                m.finished();
            }
        }
    }

    /// Records each answer's outcome; returns the ids of those that failed (to retry:
    /// one answer the sandbox blocks must not hold back the rest of its batch).
    fn record_deliveries(&self, results: Vec<(String, PutOutcome)>) -> HashSet<String> {
        let mut failed = HashSet::new();
        for (id, outcome) in results {
            match outcome {
                Ok(delivery) => self.record_delivery(&id, delivery),
                Err(why) => {
                    self.stats.transport_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id = %shown(&id), why = %shown(&why), "an answer could not be put; retrying it");
                    failed.insert(id);
                }
            }
        }
        failed
    }

    fn record_delivery(&self, id: &str, delivery: crate::transport::Delivery) {
        use crate::transport::Delivery;
        let counter = match delivery {
            Delivery::Delivered => &self.stats.delivered,
            Delivery::CallerGone => {
                tracing::info!(id = %shown(id), "answer dropped: the caller had given up");
                &self.stats.caller_gone
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.finish(id);
    }
}

/// `incoming` as the worker may hold it: file bytes over the envelope limit are dropped
/// at once, whatever the sandbox sent (a take in the sandbox should never have returned
/// them), and the request is answered 413 like any too-large file.
fn within_envelope(mut incoming: Taken, limit: usize) -> Taken {
    if let Ok(bytes) = &incoming.file {
        if bytes.len() > limit {
            let size = bytes.len() as u64;
            incoming.file = Err(TakeProblem::TooLarge { size });
        }
    }
    incoming
}

/// Doubling backoff with a cap.
#[derive(Debug)]
struct Backoff {
    start: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    fn new(config: &WorkerConfig) -> Self {
        Self {
            start: config.retry_start,
            cap: config.retry_cap,
            next: config.retry_start,
        }
    }

    fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.cap);
        now
    }

    fn reset(&mut self) {
        self.next = self.start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = WorkerConfig {
            retry_start: Duration::from_millis(50),
            retry_cap: Duration::from_millis(300),
            ..WorkerConfig::default()
        };
        let mut b = Backoff::new(&config);
        let seen: Vec<u128> = (0..5).map(|_| b.next().as_millis()).collect();
        assert_eq!(seen, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next().as_millis(), 50);
    }
}
