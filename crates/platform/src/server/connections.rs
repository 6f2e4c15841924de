//! A cap on the gRPC server's open connections (`max_connections`). Each
//! connection costs memory (about 16 KiB idle, measured by
//! `crates/cli/tests/flood.rs`) whether or not it ever sends a request, so
//! without a cap a client opening idle connections grows the server
//! without bound. A connection past the cap is accepted and closed at once
//! — the client sees the close and can retry or go elsewhere — instead of
//! waiting in the listen backlog. A connection that sends nothing within
//! `handshake_timeout_secs` of being accepted (no HTTP/2 preface) is closed,
//! so silent connections cannot hold every place.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// The accepted connections, at most `max` open at once.
pub(super) struct Capped {
    incoming: TcpIncoming,
    permits: Arc<Semaphore>,
    handshake_timeout: Option<Duration>,
}

impl Capped {
    /// `max` 0: no cap; `handshake_timeout` None: none.
    pub(super) fn new(
        incoming: TcpIncoming,
        max: usize,
        handshake_timeout: Option<Duration>,
    ) -> Self {
        let max = match max {
            0 => Semaphore::MAX_PERMITS,
            n => n,
        };
        Self {
            incoming,
            permits: Arc::new(Semaphore::new(max)),
            handshake_timeout,
        }
    }
}

impl Stream for Capped {
    type Item = std::io::Result<Held>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let stream = match Pin::new(&mut self.incoming).poll_next(cx) {
                Poll::Ready(Some(Ok(stream))) => stream,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    return Poll::Ready(Some(Ok(Held {
                        stream,
                        _permit: permit,
                        silent_until: self
                            .handshake_timeout
                            .map(|after| Box::pin(tokio::time::sleep(after))),
                    })));
                }
                Err(_) => {
                    tracing::debug!(peer = ?stream.peer_addr().ok(), "connection refused: max_connections reached");
                    drop(stream);
                }
            }
        }
    }
}

/// An accepted connection holding its place under the cap until it closes.
pub(super) struct Held {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the first byte arrives: when a silent connection is closed.
    silent_until: Option<Pin<Box<Sleep>>>,
}

impl Connected for Held {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Some(deadline) = self.silent_until.as_mut() {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.silent_until = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    tracing::debug!(peer = ?self.stream.peer_addr().ok(), "connection closed: nothing sent within handshake_timeout_secs");
                    return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
                }
                _ => {}
            }
        }
        read
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
