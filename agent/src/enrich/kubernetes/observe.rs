//! Tells the watcher task when a request for a kind of object succeeded.
//!
//! kube-rs's watcher reports errors, but not recovery: a watch that
//! starts again after an outage yields nothing until an object changes,
//! which in a quiet cluster may be a long time. This layer of the client
//! sees every response, so a successful LIST or WATCH clears the kind's
//! error in the status at once.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Request, Response};
use kube::client::Body;
use tokio::sync::mpsc;
use tower::Service;

use super::watch::Kind;

/// Wraps the client's HTTP service; clones share the channel.
#[derive(Clone)]
pub struct Observe<S> {
    pub inner: S,
    /// Bounded: a signal lost when the task is busy is repeated by the
    /// next request.
    pub ok: mpsc::Sender<Kind>,
}

impl<S, B> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let kind = Kind::from_path(req.uri().path());
        let ok = self.ok.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await;
            if let (Some(kind), Ok(r)) = (kind, &response)
                && r.status().is_success()
            {
                let _ = ok.try_send(kind);
            }
            response
        })
    }
}

impl Kind {
    /// The kind a request path is about (`/api/v1/pods`,
    /// `/apis/apps/v1/replicasets`, ...).
    pub fn from_path(path: &str) -> Option<Kind> {
        let last = path.trim_end_matches('/').rsplit('/').next()?;
        Kind::ALL.into_iter().find(|k| k.name() == last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_paths() {
        assert_eq!(Kind::from_path("/api/v1/pods"), Some(Kind::Pods));
        assert_eq!(
            Kind::from_path("/apis/discovery.k8s.io/v1/endpointslices"),
            Some(Kind::EndpointSlices)
        );
        assert_eq!(Kind::from_path("/apis/batch/v1/jobs"), Some(Kind::Jobs));
        assert_eq!(Kind::from_path("/version"), None);
    }
}
