//! The drain loop of a ring buffer: it hands every available record to
//! `on_record` until shutdown. What a record becomes, and where it goes, is
//! the caller's business.
//!
//! The programs wake the agent only once a batch of records is waiting
//! (see `batched_wakeup` in the probes): a wakeup per record cost several
//! microseconds inside every traced syscall. So the loop is woken two ways:
//! by epoll on the ring's fd (AsyncFd) when the kernel wakes it (a batch of
//! records), and by a timer that collects what is waiting below the batch
//! size, so that a quiet ring's records are at most [`TICK`] late.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// How often the ring is read without a wakeup.
pub const TICK: Duration = Duration::from_millis(20);

/// A ring buffer registered with the runtime's epoll.
pub struct ReadyRing(AsyncFd<RingBuf<MapData>>);

impl ReadyRing {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: the ring buffer owns its file descriptor and moves into
        // the AsyncFd, so the fd stays open and unshared while registered.
        unsafe { AsyncFd::register_with_interest(ring, interest) }
            .map(Self)
            .map_err(|err| std::io::Error::other(err.to_string()))
    }

    /// Waits for the kernel's wakeup. The readiness is cleared before the
    /// caller reads, so a wakeup for records written during that read is
    /// not missed.
    pub async fn woken(&mut self) -> std::io::Result<()> {
        self.0.readable_mut().await?.clear_ready();
        Ok(())
    }

    /// Hands every record available now to `on_record`.
    pub fn read_all(&mut self, mut on_record: impl FnMut(&[u8])) {
        let ring = self.0.get_mut();
        while let Some(item) = ring.next() {
            on_record(&item);
        }
    }
}

pub async fn drain(
    ring: RingBuf<MapData>,
    shutdown: CancellationToken,
    mut on_record: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut ring = ReadyRing::new(ring)?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ready = ring.woken() => ready?,
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        ring.read_all(&mut on_record);
    }
}
