//! A flow API connection that must speak first, within a deadline.
//!
//! Every client of the API speaks first (the HTTP/2 preface), so a
//! connection that has sent nothing after [`FIRST_BYTES_WITHIN`] is not a
//! client: it is closed. Without this, anyone allowed on the socket could
//! hold the agent's file descriptors with connections that never say a
//! word (HTTP/2 keeps an open connection for as long as its peer does).
//! Once a connection has spoken, it lives as long as its client wants:
//! `weft flows -f` may wait for records for hours.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// How long a new connection may stay silent.
pub const FIRST_BYTES_WITHIN: Duration = Duration::from_secs(10);

pub struct SpeaksFirst {
    stream: UnixStream,
    /// Until the first bytes arrive.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl SpeaksFirst {
    pub fn new(stream: UnixStream, within: Duration) -> Self {
        Self {
            stream,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
        }
    }
}

impl AsyncRead for SpeaksFirst {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some(deadline) = &mut this.deadline else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > filled => {
                this.deadline = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "a flow API connection sent nothing within {}s",
                        FIRST_BYTES_WITHIN.as_secs()
                    ),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for SpeaksFirst {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for SpeaksFirst {
    type ConnectInfo = <UnixStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_silent_connection_times_out_and_a_speaking_one_does_not() {
        let within = Duration::from_millis(200);
        let (server, _silent_client) = UnixStream::pair().unwrap();
        let mut silent = SpeaksFirst::new(server, within);
        let mut buf = [0u8; 16];
        let started = tokio::time::Instant::now();
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= within);

        let (server, mut client) = UnixStream::pair().unwrap();
        let mut speaking = SpeaksFirst::new(server, within);
        client.write_all(b"hi").await.unwrap();
        assert_eq!(speaking.read(&mut buf).await.unwrap(), 2);
        // Past the deadline, a connection that spoke waits as long as needed.
        tokio::time::sleep(within * 2).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(speaking.read(&mut buf).await.unwrap(), 5);
        speaking.write_all(b"ok").await.unwrap();
        assert_eq!(client.read(&mut buf).await.unwrap(), 2);
    }
}
