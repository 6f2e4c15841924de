//! gRPC's message framing, counted: how many length-prefixed messages pass
//! through a body, and a request body that counts them as they go.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;

/// Counts length-prefixed gRPC messages (1 flag byte, 4 length bytes, then
/// the message) across however the bytes are split into frames.
#[derive(Debug, Default)]
pub(crate) struct MessageCounter {
    header: [u8; 5],
    filled: usize,
    remaining: usize,
}

impl MessageCounter {
    /// How many messages start in `data`.
    pub(crate) fn count(&mut self, mut data: &[u8]) -> u64 {
        let mut messages = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len());
                self.remaining -= skip;
                data = &data[skip..];
                continue;
            }
            let take = (5 - self.filled).min(data.len());
            self.header[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled == 5 {
                messages += 1;
                self.filled = 0;
                let [_, a, b, c, d] = self.header;
                self.remaining = u32::from_be_bytes([a, b, c, d]) as usize;
            }
        }
        messages
    }
}

pin_project! {
    /// A request body of a client-streaming call, counting its messages.
    pub(crate) struct CountedBody<B> {
        #[pin]
        inner: B,
        counter: Counter,
        messages: MessageCounter,
    }
}

impl<B> CountedBody<B> {
    pub(crate) fn new(inner: B, counter: Counter) -> Self {
        Self {
            inner,
            counter,
            messages: MessageCounter::default(),
        }
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            let n = this.messages.count(data);
            if n > 0 {
                this.counter.inc_by(n);
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

#[cfg(test)]
mod tests {
    use super::MessageCounter;

    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7, len as usize));
        bytes
    }

    #[test]
    fn counts_messages_however_the_bytes_are_split() {
        let stream: Vec<u8> = [message(3), message(0), message(300), message(1)].concat();
        for chunk in [1, 2, 4, 5, 6, 7, 64, stream.len()] {
            let mut counter = MessageCounter::default();
            let total: u64 = stream.chunks(chunk).map(|c| counter.count(c)).sum();
            assert_eq!(total, 4, "chunks of {chunk}");
        }
    }
}
