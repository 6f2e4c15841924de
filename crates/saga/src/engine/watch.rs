//! Waiting for one saga to end on this runner, without waking every other
//! waiter (a broadcast of every ending wakes all of them, per saga).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use tokio::sync::oneshot;

use crate::SagaStatus;

/// How a saga ended on this runner: what [`Finished`] resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub status: SagaStatus,
    /// The saga's context as it ended (JSON), for what its last steps
    /// learned — so a waiter need not read it back from elsewhere.
    pub context: serde_json::Value,
}

/// The waiters of each saga id.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    by_saga: Mutex<HashMap<String, Vec<oneshot::Sender<Ended>>>>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<oneshot::Sender<Ended>>>> {
        self.by_saga.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn add(self: &Arc<Self>, saga_id: &str) -> Finished {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(saga_id.to_owned()).or_default().push(tx);
        Finished {
            rx,
            saga_id: saga_id.to_owned(),
            waiters: self.clone(),
        }
    }

    /// Wakes the saga's waiters, and forgets them.
    pub(super) fn finished(&self, saga_id: &str, ended: &Ended) {
        let waiting = self.lock().remove(saga_id);
        for tx in waiting.into_iter().flatten() {
            let _ = tx.send(ended.clone());
        }
    }
}

/// Resolves to how the saga ended when this runner ends it; see
/// [`crate::Orchestrator::watch`]. Dropping it unregisters it.
#[derive(Debug)]
pub struct Finished {
    rx: oneshot::Receiver<Ended>,
    saga_id: String,
    waiters: Arc<Waiters>,
}

impl Future for Finished {
    /// `None` only if the orchestrator went away first.
    type Output = Option<Ended>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(Result::ok)
    }
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.rx.close();
        let mut by_saga = self.waiters.lock();
        if let Some(waiting) = by_saga.get_mut(&self.saga_id) {
            waiting.retain(|tx| !tx.is_closed());
            if waiting.is_empty() {
                by_saga.remove(&self.saga_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_only_the_waiters_of_the_saga_that_ended_and_forgets_dropped_ones() {
        let waiters = Arc::new(Waiters::default());
        let a = waiters.add("a");
        let mut b = waiters.add("b");
        let gone = waiters.add("c");
        drop(gone);
        assert!(!waiters.lock().contains_key("c"));
        let ended = |status| Ended {
            status,
            context: serde_json::json!({"step": "done"}),
        };
        waiters.finished("a", &ended(SagaStatus::Completed));
        assert_eq!(a.await, Some(ended(SagaStatus::Completed)));
        assert!(futures_poll_once(&mut b).is_none());
        waiters.finished("b", &ended(SagaStatus::Compensated));
        assert_eq!(b.await, Some(ended(SagaStatus::Compensated)));
        assert!(waiters.lock().is_empty());
    }

    fn futures_poll_once(f: &mut Finished) -> Option<Option<Ended>> {
        let waker = std::task::Waker::noop();
        match Pin::new(f).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }
}
