//! What kinds of events there are. Events carry their kind as its dotted
//! name (streams and clients see text, and a newer service may add kinds),
//! but code names kinds through [`EventKind`].

/// A kind of [`crate::ActivityEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    UserCreated,
    UserUpdated,
    UserStatusChanged,
    UserDeleted,
    OrderCreated,
    OrderConfirmed,
    OrderCancelled,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
}

impl EventKind {
    const ALL: [EventKind; 10] = [
        Self::UserCreated,
        Self::UserUpdated,
        Self::UserStatusChanged,
        Self::UserDeleted,
        Self::OrderCreated,
        Self::OrderConfirmed,
        Self::OrderCancelled,
        Self::PaymentCaptured,
        Self::PaymentDeclined,
        Self::PaymentRefunded,
    ];

    /// The dotted name events carry, e.g. `order.confirmed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserCreated => "user.created",
            Self::UserUpdated => "user.updated",
            Self::UserStatusChanged => "user.status_changed",
            Self::UserDeleted => "user.deleted",
            Self::OrderCreated => "order.created",
            Self::OrderConfirmed => "order.confirmed",
            Self::OrderCancelled => "order.cancelled",
            Self::PaymentCaptured => "payment.captured",
            Self::PaymentDeclined => "payment.declined",
            Self::PaymentRefunded => "payment.refunded",
        }
    }

    /// The kind of this name, if it is one this build knows.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// Whether the event changed the user record itself (so cached copies
    /// of it are stale).
    pub fn changes_user(self) -> bool {
        matches!(
            self,
            Self::UserCreated | Self::UserUpdated | Self::UserStatusChanged | Self::UserDeleted
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::from_name("user.teleported"), None);
    }
}
