//! The order sagas.
//!
//! `order.place`: validate user (ACTIVE) → reserve stock → charge → confirm;
//! compensated in reverse (settle the charge and refund what it took,
//! release stock) and the order CANCELLED with the reason. Confirmation is
//! the pivot: once the saga reaches it, it only goes forward, whatever the
//! deadline. `order.cancel` (CancelOrder of a CONFIRMED order): refund →
//! release stock → mark CANCELLED; it has no deadline and only goes
//! forward.
//!
//! Compensation never moves money forward: a charge is settled with
//! VoidCharge, which learns what the charge key did without asking the
//! provider to charge (and closes it if it never charged), then everything
//! left of the capture is refunded.
//!
//! Every step is idempotent: stock by the order's reservation rows, money by
//! idempotency keys derived from the order (`order-<id>-charge`, and
//! `order-<id>-refund-<refunded so far>` / `order-<id>-cancel-refund-<…>`,
//! so a repeated round replays its refund and a later round refunds what a
//! given-up refund left), statuses by conditional transitions. Every write
//! to the order database holds the saga's fence.

mod cancel;
mod place;

use mercato_activity::{ActivityEvent, ActivityFeed, EventKind};
use mercato_saga::StepError;

pub use cancel::{CancelContext, CancelOrderSaga};
pub use place::{PlaceContext, PlaceOrderSaga};

use crate::{
    catalog::Catalog,
    error::StorageError,
    peers::{PeerError, Peers, Refunded, Settled},
    store::OrderStore,
};

/// What the sagas' steps need.
#[derive(Debug, Clone)]
pub struct Deps {
    pub catalog: Catalog,
    pub orders: OrderStore,
    pub peers: Peers,
    pub activity: ActivityFeed,
}

impl Deps {
    pub(super) async fn announce(
        &self,
        user_id: &str,
        kind: EventKind,
        order_id: &str,
        extra: Option<(&str, String)>,
    ) {
        let mut metadata = vec![("order_id", order_id.to_owned())];
        metadata.extend(extra);
        self.activity
            .announce(ActivityEvent::now(user_id, kind, metadata))
            .await;
    }

    /// Settles the charge key and refunds everything it took that is left,
    /// with refund keys `<refund_prefix>-<refunded so far>`.
    pub(super) async fn settle_and_refund(
        &self,
        charge_key: &str,
        refund_prefix: &str,
    ) -> Result<(), StepError> {
        let balance = match self
            .peers
            .void_charge(charge_key)
            .await
            .map_err(peer_error)?
        {
            Settled::NothingCaptured => return Ok(()),
            Settled::Unknown(why) => {
                return Err(StepError::Transient(format!(
                    "charge outcome not known yet: {why}"
                )));
            }
            Settled::Captured(balance) => balance,
        };
        if balance.refunded_minor >= balance.captured_minor {
            return Ok(());
        }
        let key = format!("{refund_prefix}-{}", balance.refunded_minor);
        match self
            .peers
            .refund_rest(&key, &balance.payment_id)
            .await
            .map_err(peer_error)?
        {
            Refunded::Fully => Ok(()),
            Refunded::Partly(left) => Err(StepError::Transient(format!(
                "{} of {} refunded; refunding the rest",
                left.refunded_minor, left.captured_minor
            ))),
            Refunded::Pending => Err(StepError::Transient(
                "another refund of this payment is in flight; waiting for it".into(),
            )),
            Refunded::Unknown(why) => Err(StepError::Transient(format!(
                "refund outcome not known yet: {why}"
            ))),
        }
    }
}

/// A peer failure as a step outcome.
pub(super) fn peer_error(e: PeerError) -> StepError {
    match e {
        PeerError::Transient(why) => StepError::Transient(why),
        PeerError::Refused(why) => StepError::Business(why),
        PeerError::Misconfigured(why) => StepError::Misconfigured(why),
    }
}

/// A storage failure as a step outcome: retried, unless fenced out.
pub(super) fn storage(e: StorageError) -> StepError {
    match e {
        StorageError::Fenced => StepError::Fenced,
        other => StepError::Transient(other.to_string()),
    }
}
