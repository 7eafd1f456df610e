//! `weft agent --bpf-log`: the kernel programs' rare-path logs
//! (ebpf/probes/src/klog.rs), read from their aya-log ring and written to
//! the agent's log like its own lines (target `weft_probes::klog`).
//!
//! The programs' log level is a read-only global fixed at load: 0 (off,
//! the verifier drops every log statement) unless the flag is given.

use std::os::fd::AsRawFd;

use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

/// The aya-log global holding the programs' log level.
const LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";
/// aya-log's `Level::Off` and `Level::Info`: rare paths log at warn or info.
const LEVEL_OFF: u8 = 0;
const LEVEL_INFO: u8 = 3;

pub type KernelLog = EbpfLogger<&'static dyn log::Log>;

/// Sets the programs' log level before they are loaded.
pub fn set_level<'a>(loader: &mut EbpfLoader<'a>, on: bool) {
    let level: &'static u8 = if on { &LEVEL_INFO } else { &LEVEL_OFF };
    loader.override_global(LEVEL_GLOBAL, level, true);
}

/// Takes the log ring out of the loaded object when logging is on.
pub fn take(ebpf: &mut Ebpf, on: bool) -> anyhow::Result<Option<KernelLog>> {
    if !on {
        return Ok(None);
    }
    let logger = EbpfLogger::init(ebpf)
        .map_err(|e| anyhow::anyhow!("--bpf-log: cannot read the programs' log ring: {e}"))?;
    log::info!("--bpf-log: the kernel programs log their rare paths here");
    Ok(Some(logger))
}

/// Forwards the programs' records to the agent's log until the task is
/// dropped with the runtime.
pub async fn forward(logger: KernelLog) {
    let fd = logger.as_raw_fd();
    // SAFETY: the fd is the ring map's, owned by the logger, which the
    // AsyncFd owns until it is dropped: it stays open and the same.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(e) => {
            log::warn!("--bpf-log: cannot poll the programs' log ring (fd {fd}): {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = ring.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
