//! The response future every fog layer returns.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use fog_core::{BoxError, Connection};
use futures_util::future::BoxFuture;

/// The future of a fog layer's service: resolves to the connection, or the error that ended the
/// attempt. Layers do async work (signalling, checks) before they call the next service, so the
/// work lives in a boxed future that owns everything it needs (futures must be `'static`).
pub struct ResponseFuture {
    inner: BoxFuture<'static, Result<Connection, BoxError>>,
}

impl ResponseFuture {
    pub(crate) fn new(
        future: impl Future<Output = Result<Connection, BoxError>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            inner: Box::pin(future),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Connection, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

/// Takes the ready inner service out of `slot`, leaving a fresh clone behind: a clone that was
/// never made ready must not be called (tower's `mem::replace` pattern).
pub(crate) fn take_inner<S: Clone>(slot: &mut S) -> S {
    let clone = slot.clone();
    std::mem::replace(slot, clone)
}
