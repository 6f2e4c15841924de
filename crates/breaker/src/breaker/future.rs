use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use super::Shared;
use crate::{
    BoxError, LayerError,
    policy::{Outcome, Permit},
};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;

/// Reports the outcome once, when it is known (or as a failure if dropped
/// before: a cancelled call tells nothing good about the downstream).
#[derive(Debug)]
struct Reporter {
    permit: Permit,
    shared: Arc<Shared>,
}

impl Reporter {
    fn report(self, outcome: Outcome) {
        self.shared.record(self.permit, outcome);
        std::mem::forget(self);
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        // Dropped without a verdict: the caller gave up (deadline) first.
        self.shared.record(self.permit, Outcome::Failure);
    }
}

pin_project! {
    /// The breaker's response future.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        reporter: Option<Reporter>,
        rejected_by: Option<String>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn admitted(inner: F, permit: Permit, shared: Arc<Shared>) -> Self {
        Self {
            inner: Some(inner),
            reporter: Some(Reporter { permit, shared }),
            rejected_by: None,
        }
    }

    pub(super) fn rejected(name: String) -> Self {
        Self {
            inner: None,
            reporter: None,
            rejected_by: Some(name),
        }
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<ObservedBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let name = this.rejected_by.take().unwrap_or_default();
            return Poll::Ready(Err(
                crate::rescue(Box::new(LayerError::BreakerOpen(name))).into()
            ));
        };
        let result = ready!(inner.poll(cx));
        let reporter = this.reporter.take();
        Poll::Ready(match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let outcome = reporter
                    .as_ref()
                    .and_then(|r| r.shared.outcome_of(&parts.headers));
                let reporter = match (reporter, outcome) {
                    (Some(r), Some(outcome)) => {
                        r.report(outcome);
                        None
                    }
                    (r, _) => r,
                };
                Ok(http::Response::from_parts(
                    parts,
                    ObservedBody {
                        inner: body,
                        reporter,
                    },
                ))
            }
            Err(e) => {
                if let Some(r) = reporter {
                    r.report(Outcome::Failure);
                }
                Err(crate::rescue(e.into()).into())
            }
        })
    }
}

pin_project! {
    /// A response body that reports the call's outcome from its trailers.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        reporter: Option<Reporter>,
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some(r) = this.reporter.take()
                {
                    let outcome = r.shared.outcome_of(trailers);
                    r.report(outcome.unwrap_or(Outcome::Success));
                }
            }
            Some(Err(_)) => {
                if let Some(r) = this.reporter.take() {
                    r.report(Outcome::Failure);
                }
            }
            None => {
                if let Some(r) = this.reporter.take() {
                    r.report(Outcome::Success);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
