//! Loading and attaching programs one by one, carrying on past a program a
//! kernel refuses unless the agent cannot work without it.
//!
//! Kernels differ in what their verifier accepts and which hooks exist. A
//! refused optional program (RTT, resets, drops, payload capture...) costs
//! what it measures, not the whole agent: it is named with the start and
//! the end of the verifier's log in `weft status` and in the
//! `weft_program_state` metric, and everything else runs.

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    maps::sock::SockMapFd,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, RawTracePoint, SkMsg,
        SockOps, TracePoint,
    },
};

use super::LoadError;
use crate::status::{ProgramFailure, ProgramStatus};

/// Lines of a load error kept at each end: the verifier's log starts with
/// the failing instruction's context and ends with its verdict and stats.
const ERROR_LINES: usize = 3;

/// Whether the agent may run without a program.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Need {
    /// Without it the agent has nothing to report: loading stops.
    Required,
    /// Its failure is reported and loading carries on.
    Optional,
}

/// The programs attached so far and those a kernel refused.
#[derive(Default)]
pub struct Attached {
    pub programs: Vec<ProgramStatus>,
    pub failed: Vec<ProgramFailure>,
}

impl Attached {
    /// Records the outcome of loading and attaching one program: whether
    /// it runs; an error only for a required one.
    fn record(
        &mut self,
        need: Need,
        name: &'static str,
        kind: &str,
        attach_point: String,
        result: Result<(), ProgramError>,
    ) -> Result<bool, LoadError> {
        match result {
            Ok(()) => {
                self.programs.push(ProgramStatus {
                    name: name.into(),
                    kind: kind.into(),
                    attach_point,
                });
                Ok(true)
            }
            Err(source) if need == Need::Required => Err(LoadError::Program {
                name,
                attach_point,
                source,
            }),
            Err(source) => {
                let full = source.to_string();
                log::debug!("eBPF program {name} ({attach_point}): {full}");
                let error = condense(&full);
                log::warn!("eBPF program {name} ({attach_point}) was not loaded: {error}");
                self.failed.push(ProgramFailure {
                    name: name.into(),
                    kind: kind.into(),
                    attach_point,
                    error,
                });
                Ok(false)
            }
        }
    }

    /// Loads `name` and attaches it to the tracepoint `category:tracepoint`.
    pub fn tracepoint(
        &mut self,
        ebpf: &mut Ebpf,
        need: Need,
        name: &'static str,
        category: &str,
        tracepoint: &str,
    ) -> Result<bool, LoadError> {
        let result = program_mut::<TracePoint>(ebpf, name).and_then(|program| {
            program.load()?;
            program.attach(category, tracepoint).map(drop)
        });
        let attach_point = format!("{category}/{tracepoint}");
        self.record(need, name, "tracepoint", attach_point, result)
    }

    /// Loads `name` and attaches it to the raw tracepoint `tracepoint`.
    pub fn raw_tracepoint(
        &mut self,
        ebpf: &mut Ebpf,
        need: Need,
        name: &'static str,
        tracepoint: &str,
    ) -> Result<bool, LoadError> {
        let result = program_mut::<RawTracePoint>(ebpf, name).and_then(|program| {
            program.load()?;
            program.attach(tracepoint).map(drop).inspect_err(|_| {
                // Not kept loaded when it cannot run: its fallback runs
                // instead, and only the programs that run are counted.
                let _ = program.unload();
            })
        });
        self.record(need, name, "raw_tracepoint", tracepoint.to_owned(), result)
    }

    /// Loads `name` and attaches it to the cgroup v2 root.
    pub fn cgroup_skb(
        &mut self,
        ebpf: &mut Ebpf,
        need: Need,
        name: &'static str,
        cgroup: (&File, &Path),
        attach_type: CgroupSkbAttachType,
    ) -> Result<bool, LoadError> {
        let label = match attach_type {
            CgroupSkbAttachType::Ingress => "ingress",
            CgroupSkbAttachType::Egress => "egress",
        };
        let result = program_mut::<CgroupSkb>(ebpf, name).and_then(|program| {
            program.load()?;
            // aya attaches through a BPF link, which the kernel always
            // stacks with other programs on the cgroup (and rejects attach
            // flags for), so other tools keep working next to ours.
            program
                .attach(cgroup.0, attach_type, CgroupAttachMode::Single)
                .map(drop)
        });
        let attach_point = format!("cgroup {} ({label})", cgroup.1.display());
        self.record(need, name, "cgroup_skb", attach_point, result)
    }

    /// Loads the sock_ops program `name` and attaches it to the cgroup v2
    /// root (through a link, stacked with other tools' programs).
    pub fn sock_ops(
        &mut self,
        ebpf: &mut Ebpf,
        need: Need,
        name: &'static str,
        cgroup: (&File, &Path),
    ) -> Result<bool, LoadError> {
        let result = program_mut::<SockOps>(ebpf, name).and_then(|program| {
            program.load()?;
            program.attach(cgroup.0, CgroupAttachMode::Single).map(drop)
        });
        let attach_point = format!("cgroup {}", cgroup.1.display());
        self.record(need, name, "sock_ops", attach_point, result)
    }

    /// Loads the sk_msg program `name` and attaches it to the socket map
    /// `map` (`map_name` for the status).
    pub fn sk_msg(
        &mut self,
        ebpf: &mut Ebpf,
        need: Need,
        name: &'static str,
        (map, map_name): (&SockMapFd, &str),
    ) -> Result<bool, LoadError> {
        let result = program_mut::<SkMsg>(ebpf, name).and_then(|program| {
            program.load()?;
            program.attach(map).map(drop)
        });
        self.record(need, name, "sk_msg", format!("map {map_name}"), result)
    }
}

pub(super) fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProgramError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()
}

/// The first and last lines of a load error (a verifier log can run to
/// thousands of lines), joined with " | " to fit one status row.
pub fn condense(error: &str) -> String {
    let mut lines: Vec<&str> = error
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // The verifier's statistics come after its verdict: dropped, so that
    // the verdict is among the last lines.
    while lines.last().is_some_and(|l| is_statistics(l)) {
        lines.pop();
    }
    if lines.len() <= 2 * ERROR_LINES {
        return lines.join(" | ");
    }
    let head = lines[..ERROR_LINES].join(" | ");
    let tail = lines[lines.len() - ERROR_LINES..].join(" | ");
    let skipped = lines.len() - 2 * ERROR_LINES;
    format!("{head} | ... ({skipped} lines) ... | {tail}")
}

/// The verifier's closing statistics ("processed 840 insns ...").
fn is_statistics(line: &str) -> bool {
    ["verification time", "stack depth", "processed "]
        .iter()
        .any(|p| line.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_errors_are_kept_whole() {
        let e = "the BPF_PROG_LOAD syscall returned Permission denied.\n\
                 Verifier output: combined stack size of 2 calls is 672. Too large\n\
                 verification time 3822351 usec\n\
                 stack depth 408+232+0\n\
                 processed 11561 insns (limit 1000000)\n";
        assert_eq!(
            condense(e),
            "the BPF_PROG_LOAD syscall returned Permission denied. | \
             Verifier output: combined stack size of 2 calls is 672. Too large"
        );
    }

    #[test]
    fn long_logs_keep_their_start_and_verdict() {
        let log: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(
            condense(&log),
            "line 1 | line 2 | line 3 | ... (94 lines) ... | line 98 | line 99 | line 100"
        );
    }

    #[test]
    fn a_refused_optional_program_is_recorded_and_loading_goes_on() {
        let mut attached = Attached::default();
        let refused = Err(ProgramError::UnexpectedProgramType);
        attached
            .record(
                Need::Optional,
                "weft_tcp_probe",
                "tracepoint",
                "tcp/tcp_probe".into(),
                refused,
            )
            .expect("an optional program does not stop loading");
        attached
            .record(
                Need::Optional,
                "weft_rst_send",
                "tracepoint",
                "tcp/tcp_send_reset".into(),
                Ok(()),
            )
            .expect("attached");
        assert_eq!(attached.failed.len(), 1);
        assert_eq!(attached.failed[0].name, "weft_tcp_probe");
        assert_eq!(attached.programs.len(), 1);
        let required = attached.record(
            Need::Required,
            "weft_tcp_state",
            "tracepoint",
            "sock/inet_sock_set_state".into(),
            Err(ProgramError::UnexpectedProgramType),
        );
        assert!(matches!(
            required,
            Err(LoadError::Program {
                name: "weft_tcp_state",
                ..
            })
        ));
    }
}
