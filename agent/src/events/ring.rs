//! The lifecycle ring reader: decodes each record and hands it to the flow
//! table through a bounded queue. When the queue is full the record is
//! counted as lost rather than blocking the reader (which would let the
//! kernel ring overflow instead, uncounted by stage).

use std::sync::{Arc, atomic::Ordering};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weft_common::event::TcpEvent;

use super::{PipelineCounters, decode, drain::drain};

pub async fn read_events(
    ring: RingBuf<MapData>,
    out: mpsc::Sender<TcpEvent>,
    counters: Arc<PipelineCounters>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    drain(ring, shutdown, |bytes| {
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
    })
    .await
}
