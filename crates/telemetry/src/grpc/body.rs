//! The response body that watches a call: it counts the gRPC messages
//! passing through and reads the status from the trailers.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tonic::Code;

use super::{framing::MessageCounter, metrics::CallRecord};

/// Parsed once: looking a header up by `&str` parses and hashes the name
/// on every call.
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The status a header or trailer block carries, if any.
pub(crate) fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    let code = headers
        .get(&GRPC_STATUS)?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(code))
}

pin_project! {
    /// A response body that counts the messages in it, finishes the call
    /// with the code from its trailers, and enters the call's span while
    /// polled (a streaming handler does its work then).
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<CallRecord>,
        messages: MessageCounter,
    }
}

impl<B> ObservedBody<B> {
    pub(crate) fn new(inner: B, call: Option<CallRecord>) -> Self {
        Self {
            inner,
            call,
            messages: MessageCounter::default(),
        }
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let streaming = this.call.as_ref().filter(|call| call.streams_response);
        let span = streaming.map(|call| call.span.clone());
        let _entered = span.as_ref().map(tracing::Span::enter);
        let frame = match streaming.and_then(|call| call.call.clone()) {
            // The stream's items are produced now: as part of the call.
            Some(served) => ready!(served.sync_scope(|| this.inner.as_mut().poll_frame(cx))),
            None => ready!(this.inner.as_mut().poll_frame(cx)),
        };
        if let Some(call) = this.call.as_mut() {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        call.response_messages(this.messages.count(data));
                    } else if let Some(trailers) = frame.trailers_ref() {
                        call.finish(status_of(trailers).unwrap_or(Code::Unknown));
                    }
                }
                // A body that fails or ends without a status: the call broke.
                Some(Err(_)) | None => call.finish(Code::Unknown),
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
