//! The ring buffer reader: one task, woken by epoll on the ring's fd
//! (AsyncFd), drains every available record, decodes it and hands it to
//! the flow table through a bounded queue. When the queue is full the
//! record is counted as lost rather than blocking the reader (which would
//! let the kernel ring overflow instead, uncounted by stage).

use std::sync::{Arc, atomic::Ordering};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::sync::CancellationToken;
use weft_common::event::TcpEvent;

use super::{PipelineCounters, decode};

pub async fn read_events(
    ring: RingBuf<MapData>,
    out: mpsc::Sender<TcpEvent>,
    counters: Arc<PipelineCounters>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let interest = tokio::io::Interest::READABLE;
    // SAFETY: the ring buffer owns its file descriptor and moves into the
    // AsyncFd, so the fd stays open and unshared while it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, interest) }
        .map_err(|err| std::io::Error::other(err.to_string()))?;
    loop {
        let mut guard = tokio::select! {
            guard = fd.readable_mut() => guard?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            counters.read.fetch_add(1, Ordering::Relaxed);
            match decode::tcp_event(&item) {
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
        guard.clear_ready();
    }
}
