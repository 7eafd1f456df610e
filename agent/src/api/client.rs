//! Connecting the CLI to the agent's socket.

use std::error::Error as _;
use std::io;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::ApiError;
use super::proto::flow_api_client::FlowApiClient;

/// Opens a client on the agent's unix socket; fails at once, with a message
/// saying what to check, when nothing serves there.
pub async fn connect(socket: &Path) -> Result<FlowApiClient<Channel>, ApiError> {
    let path = socket.to_path_buf();
    // The URI is required by the HTTP/2 layer and never resolved: the
    // connector below ignores it and dials the socket.
    let endpoint = Endpoint::from_static("http://[::]:50051");
    let dial = path.clone();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dial = dial.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(dial).await?)) }
        }))
        .await
        .map_err(|error| classify(path, error))?;
    Ok(FlowApiClient::new(channel))
}

/// Turns tonic's layered connect error back into the socket error the user
/// can act on (missing file, refused, permission).
fn classify(path: PathBuf, error: tonic::transport::Error) -> ApiError {
    let io_error = {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = error.source();
        loop {
            match cause {
                None => break None,
                Some(e) => match e.downcast_ref::<io::Error>() {
                    Some(io) => break Some(io::Error::new(io.kind(), io.to_string())),
                    None => cause = e.source(),
                },
            }
        }
    };
    match io_error {
        Some(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            ApiError::PermissionDenied { path, error }
        }
        Some(error) => ApiError::Unreachable { path, error },
        None => ApiError::Connect { path, error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.sock");
        let err = connect(&path).await.unwrap_err();
        assert!(matches!(err, ApiError::Unreachable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot reach the weft agent at {}: No such file or directory",
                path.display()
            )),
            "{msg}"
        );
        assert!(
            msg.ends_with("is `weft agent` running? (use --api-socket to point at another socket)"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn refused_socket_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.sock");
        // A socket file whose listener is gone: connect is refused.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = connect(&path).await.unwrap_err();
        assert!(err.to_string().contains("Connection refused"), "{err}");
    }
}
