//! The DESIGN §4 invariant checker (`mercato_testkit::invariants`) over a
//! [`Suite`]'s clients.

use std::{collections::HashMap, time::Duration};

pub use mercato_testkit::invariants::Report;
use mercato_testkit::invariants::{self, Clients};

use crate::support::Suite;

impl Suite {
    /// The administrator's clients the checker reads through.
    pub fn clients(&self) -> Clients {
        Clients {
            orders: self.orders.clone(),
            payments: self.payments.clone(),
            catalog: self.catalog.clone(),
        }
    }
}

/// Waits (up to `limit`) until no order of `users` is PENDING.
pub async fn wait_until_quiet(suite: &mut Suite, users: &[String], limit: Duration) {
    invariants::wait_until_quiet(&suite.clients(), users, limit).await;
}

/// Checks every order of `users`, and the stock of every product in
/// `initial_stock` against it.
pub async fn check(
    suite: &mut Suite,
    users: &[String],
    initial_stock: &HashMap<String, i64>,
) -> Report {
    invariants::check(&suite.clients(), users, initial_stock).await
}
