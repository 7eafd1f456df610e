//! The observation rings' reader: lifecycle events (`EVENTS`) and payload
//! records (`DATA`) read by one loop, decoded, and handed to the flow table
//! through two bounded queues. What does not fit is counted.
//!
//! Both rings wake the agent only once a batch is waiting (`batched_wakeup`
//! in the probes), so most records are found by the timer of the drain
//! loop. One loop reads both so that a connection's events reach the flow
//! table before its payload: each pass reads the lifecycle ring, then the
//! payload ring, then the lifecycle ring again, and only then hands the
//! payload records over. A response is written after both ends of its
//! connection were established, and so after both open events: the record
//! that completes an exchange is never handed over before those events
//! were read (by the second lifecycle read at the latest). The flow table
//! takes waiting events before waiting payload (its select is biased).
//!
//! Without this order, a short connection whose open, request and response
//! all wait in the rings together could have its payload parsed before its
//! open was known: a scrape of the agent's own metrics endpoint would then
//! be reported as traffic.

use std::sync::{Arc, atomic::Ordering};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weft_common::event::TcpEvent;

use super::{
    PipelineCounters,
    data::{self, DataRecord},
    decode,
    drain::{ReadyRing, TICK},
};

/// The two rings and where their records go.
pub struct ObservationRings {
    pub events: RingBuf<MapData>,
    pub events_tx: mpsc::Sender<TcpEvent>,
    /// Absent when L7 capture is off.
    pub data: Option<(RingBuf<MapData>, mpsc::Sender<DataRecord>)>,
}

pub async fn read_rings(
    rings: ObservationRings,
    counters: Arc<PipelineCounters>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let ObservationRings {
        events,
        events_tx,
        data,
    } = rings;
    let mut events = ReadyRing::new(events)?;
    let (mut data, data_tx) = match data {
        Some((ring, tx)) => (Some(ReadyRing::new(ring)?), Some(tx)),
        None => (None, None),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut payload = Vec::new();
    let mut on_event = |bytes: &[u8]| forward_event(bytes, &events_tx, &counters);
    loop {
        tokio::select! {
            ready = events.woken() => ready?,
            ready = async {
                match data.as_mut() {
                    Some(ring) => ring.woken().await,
                    None => std::future::pending().await,
                }
            } => ready?,
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        // Taken before the read: what was written before it is read now.
        let pass_started_ns = crate::flow::clock::mono_now_ns();
        events.read_all(&mut on_event);
        counters
            .events_read_until_ns
            .store(pass_started_ns, Ordering::SeqCst);
        if let (Some(ring), Some(tx)) = (data.as_mut(), data_tx.as_ref()) {
            ring.read_all(|bytes| {
                if let Some(record) = decode_payload(bytes, &counters) {
                    payload.push(record);
                }
            });
            // The events of the connections whose payload was just read.
            events.read_all(&mut on_event);
            for record in payload.drain(..) {
                if tx.try_send(record).is_err() {
                    counters.data_queue_full.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn forward_event(bytes: &[u8], out: &mpsc::Sender<TcpEvent>, counters: &PipelineCounters) {
    counters.read.fetch_add(1, Ordering::Relaxed);
    match decode::tcp_event(bytes) {
        Ok(event) => {
            if out.try_send(event).is_err() {
                counters.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(err) => {
            counters.decode_errors.fetch_add(1, Ordering::Relaxed);
            log::debug!("{err}");
        }
    }
}

fn decode_payload(bytes: &[u8], counters: &PipelineCounters) -> Option<DataRecord> {
    counters.data_read.fetch_add(1, Ordering::Relaxed);
    match data::decode(bytes) {
        Ok(record) => Some(record),
        Err(err) => {
            counters.data_decode_errors.fetch_add(1, Ordering::Relaxed);
            log::debug!("{err}");
            None
        }
    }
}
