//! The client commands, `weft flows` and `weft status`: clap arguments and
//! runners that talk to the local agent over the flow API.
//!
//! Exit codes follow the spec: a runner returns `Ok(ExitCode::from(2))` after
//! printing `error: ...` for bad usage (a filter value the CLI or the agent
//! rejects), and `Err` for runtime failures (agent unreachable, stream
//! broken), which the binary prints and turns into exit code 1.

use std::fmt::Display;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use tonic::transport::Channel;

use crate::api::{self, DEFAULT_API_SOCKET, proto::flow_api_client::FlowApiClient};

pub mod completions;
pub mod filter_args;
pub mod flow_text;
pub mod flows;
pub mod policies;
pub mod services;
pub mod status;
pub mod table;
pub mod top;

/// The environment variable that overrides the default socket path, so that
/// a non-default agent need not be named on every command.
pub const API_SOCKET_ENV: &str = "WEFT_API_SOCKET";

/// `--api-socket`, shared by the client commands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiSocketArgs {
    /// The agent's API socket [env: WEFT_API_SOCKET] [default: /run/weft/weft.sock]
    #[arg(long = "api-socket", value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
}

impl ApiSocketArgs {
    /// The socket to dial: the flag, else `$WEFT_API_SOCKET`, else the
    /// default. (Resolved here rather than by clap's `env`, so that an
    /// empty `$WEFT_API_SOCKET` means the default.)
    pub fn path(&self) -> PathBuf {
        self.api_socket
            .clone()
            .or_else(|| {
                std::env::var_os(API_SOCKET_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCKET))
    }
}

/// Prints a usage error the way clap does, and returns exit code 2.
pub(crate) fn usage_error(message: impl Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// What an RPC error means for the user: the agent rejecting the request is
/// bad usage (exit 2); anything else is a runtime failure.
pub(crate) fn rpc_failure(socket: &Path, status: tonic::Status) -> anyhow::Result<ExitCode> {
    match status.code() {
        tonic::Code::InvalidArgument => Ok(usage_error(status.message())),
        tonic::Code::Unavailable => Err(anyhow!(
            "the weft agent at {} closed the connection ({}); is it shutting down?",
            socket.display(),
            status.message()
        )),
        _ => Err(anyhow!(
            "the weft agent at {} answered with an error: {} ({:?})",
            socket.display(),
            status.message(),
            status.code()
        )),
    }
}

/// How long a one-shot command waits for the agent's answer: its reports
/// are prepared in advance, so a slow answer means a stuck agent, which is
/// worth saying.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One request to the agent at `socket` answered by a JSON document
/// (`weft status`, `weft services`): `Ok(Ok(json))`, or `Ok(Err(code))`
/// for a request the agent rejected as bad usage (already printed).
pub(crate) async fn ask_json<F, Fut>(
    socket: &Path,
    ask: F,
) -> anyhow::Result<Result<String, ExitCode>>
where
    F: FnOnce(FlowApiClient<Channel>) -> Fut,
    Fut: Future<Output = Result<String, tonic::Status>>,
{
    let client = api::connect(socket).await?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, ask(client))
        .await
        .map_err(|_| {
            anyhow!(
                "the weft agent at {} did not answer within {}s",
                socket.display(),
                ANSWER_TIMEOUT.as_secs()
            )
        })?;
    match answer {
        Ok(json) => Ok(Ok(json)),
        Err(status) => rpc_failure(socket, status).map(Err),
    }
}

/// Writes a command's output; the reader leaving early (`weft status |
/// head`) is not a failure.
pub(crate) fn print(text: &str) -> anyhow::Result<ExitCode> {
    let mut stdout = io::stdout();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Whether writing the output failed because the reader went away
/// (`weft flows -f | head`): that is the normal end of a pipeline, not an
/// error.
pub(crate) fn is_broken_pipe(error: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .is_some_and(|e| e.io_error_kind() == Some(BrokenPipe))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_over_default() {
        let args = ApiSocketArgs {
            api_socket: Some("/tmp/x.sock".into()),
        };
        assert_eq!(args.path(), PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn invalid_argument_is_usage_and_others_are_failures() {
        let socket = std::path::Path::new("/run/weft/weft.sock");
        let usage = rpc_failure(socket, tonic::Status::invalid_argument("invalid --port"));
        assert_eq!(usage.unwrap(), ExitCode::from(2));
        let failure = rpc_failure(socket, tonic::Status::internal("boom")).unwrap_err();
        assert!(
            failure.to_string().contains("/run/weft/weft.sock"),
            "{failure}"
        );
    }

    #[test]
    fn broken_pipe_is_recognised() {
        let err = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow!("other")));
    }
}
