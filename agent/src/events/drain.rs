//! The drain loop shared by the ring buffer readers: woken by epoll on the
//! ring's fd (AsyncFd), it hands every available record to `on_record`
//! until shutdown. What a record becomes, and where it goes, is the
//! caller's business.

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

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
    loop {
        let mut guard = tokio::select! {
            guard = fd.readable_mut() => guard?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            on_record(&item);
        }
        guard.clear_ready();
    }
}
