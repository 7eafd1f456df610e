//! The drain loop shared by the ring buffer readers: it hands every
//! available record to `on_record` until shutdown. What a record becomes,
//! and where it goes, is the caller's business.
//!
//! The payload programs wake the agent only once a batch of records is
//! waiting (see `batched_wakeup` in the probes): a wakeup per record cost
//! several microseconds inside every traced syscall. So the loop is woken
//! two ways: by epoll on the ring's fd (AsyncFd) when the kernel wakes it
//! (every lifecycle event, a batch of payload records), and by a timer
//! that collects what is waiting below the batch size, so that a quiet
//! ring's records are at most [`TICK`] late.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// How often the ring is read without a wakeup.
pub const TICK: Duration = Duration::from_millis(20);

pub async fn drain(
    ring: RingBuf<MapData>,
    shutdown: CancellationToken,
    mut on_record: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let interest = tokio::io::Interest::READABLE;
    // SAFETY: the ring buffer owns its file descriptor and moves into the
    // AsyncFd, so the fd stays open and unshared while it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, interest) }
        .map_err(|err| std::io::Error::other(err.to_string()))?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                read_all(guard.get_inner_mut(), &mut on_record);
                guard.clear_ready();
            }
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        // Also after a wakeup: records may have arrived since the read.
        read_all(fd.get_mut(), &mut on_record);
    }
}

fn read_all(ring: &mut RingBuf<MapData>, on_record: &mut impl FnMut(&[u8])) {
    while let Some(item) = ring.next() {
        on_record(&item);
    }
}
