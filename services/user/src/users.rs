//! The user use cases: what each RPC does, independent of gRPC.

use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use mercato_api::pagination::Page;
use prometheus_client::metrics::counter::Counter;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use mercato_activity::{ActivityEvent, ActivityFeed, EventKind};

use crate::{
    cache::UserCache,
    domain::{NewUser, User, UserId, UserPatch, UserStatus},
    error::UserError,
    store::UserStore,
};

/// The user service's use cases.
#[derive(Debug, Clone)]
pub struct Users {
    store: UserStore,
    cache: UserCache,
    activity: ActivityFeed,
    users_created: Counter,
}

impl Users {
    /// Wires the parts.
    pub fn new(
        store: UserStore,
        cache: UserCache,
        activity: ActivityFeed,
        users_created: Counter,
    ) -> Self {
        Self {
            store,
            cache,
            activity,
            users_created,
        }
    }

    /// Registers a user and announces `user.created`.
    pub async fn create(&self, new: NewUser) -> Result<User, UserError> {
        let user = self.store.insert(new).await?;
        self.users_created.inc();
        self.cache.store(&user).await;
        self.announce(
            &user.id,
            EventKind::UserCreated,
            [("email", user.email.as_str().to_owned())],
        )
        .await;
        Ok(user)
    }

    /// Reads a user through the cache.
    pub async fn get(&self, id: &UserId) -> Result<Arc<User>, UserError> {
        if let Some(user) = self.cache.get(id).await {
            return Ok(user);
        }
        let user = self.store.get(id).await?.ok_or(UserError::NotFound)?;
        self.cache.store(&user).await;
        Ok(Arc::new(user))
    }

    /// Applies a patch and announces `user.updated`. An empty patch changes
    /// nothing and returns the user as it is.
    pub async fn update(&self, id: &UserId, patch: UserPatch) -> Result<User, UserError> {
        if patch.is_empty() {
            return self.get(id).await.map(|u| (*u).clone());
        }
        let user = self
            .store
            .update(id, &patch)
            .await?
            .ok_or(UserError::NotFound)?;
        self.cache.store(&user).await;
        self.announce(
            &user.id,
            EventKind::UserUpdated,
            [("changed", patch.changed_fields().join(","))],
        )
        .await;
        Ok(user)
    }

    /// Soft delete: status INACTIVE, announced as `user.deleted` when it changed.
    pub async fn delete(&self, id: &UserId) -> Result<User, UserError> {
        self.change_status(id, UserStatus::Inactive, EventKind::UserDeleted)
            .await
    }

    /// Sets the status, announced as `user.status_changed` when it changed.
    pub async fn set_status(&self, id: &UserId, status: UserStatus) -> Result<User, UserError> {
        self.change_status(id, status, EventKind::UserStatusChanged)
            .await
    }

    async fn change_status(
        &self,
        id: &UserId,
        status: UserStatus,
        event: EventKind,
    ) -> Result<User, UserError> {
        let (user, changed) = self
            .store
            .set_status(id, status)
            .await?
            .ok_or(UserError::NotFound)?;
        if changed {
            self.cache.store(&user).await;
            self.announce(&user.id, event, [("status", status.as_str().to_owned())])
                .await;
        }
        Ok(user)
    }

    /// A page of users after the cursor.
    pub async fn list(&self, after: Option<&str>, page_size: u32) -> Result<Page<User>, UserError> {
        let fetched = self.store.list(after, page_size + 1).await?;
        Ok(Page::of(fetched, page_size, |u| u.id.as_str().to_owned()))
    }

    /// The user's activity: replay since `from_us`, then live events.
    pub async fn activity(
        &self,
        id: &UserId,
        from_us: Option<i64>,
    ) -> Result<impl Stream<Item = Result<ActivityEvent, UserError>> + Send + 'static, UserError>
    {
        self.get(id).await?;
        Ok(self
            .activity
            .subscribe(id.as_str().to_owned(), from_us)
            .await?
            .map(|item| item.map_err(UserError::from)))
    }

    async fn announce<const N: usize>(
        &self,
        id: &UserId,
        kind: EventKind,
        metadata: [(&str, String); N],
    ) {
        self.activity
            .announce(ActivityEvent::now(id.as_str(), kind, metadata))
            .await;
    }
}

impl Users {
    /// With a shared (Redis) feed, evicts the in-process copies of users
    /// that other replicas change (see `cache`) until `stop`; `None` with an
    /// in-process feed, where every write is this process's own.
    pub fn spawn_remote_eviction(&self, stop: CancellationToken) -> Option<JoinHandle<()>> {
        if !self.activity.is_shared() {
            return None;
        }
        let events = self.activity.listen_user_changes();
        Some(tokio::spawn(follow_evictions(
            events,
            self.cache.clone(),
            stop,
        )))
    }
}

/// Drops the L1 copy of every user an event says changed, until `stop` or
/// the feed closes; having missed events (it fell behind), drops them all.
async fn follow_evictions(
    mut events: tokio::sync::broadcast::Receiver<Arc<ActivityEvent>>,
    cache: UserCache,
    stop: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let received = tokio::select! {
            received = events.recv() => received,
            () = stop.cancelled() => return,
        };
        match received {
            Ok(event) if event.kind().is_some_and(EventKind::changes_user) => {
                cache.evict_local(&event.user_id).await;
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                // Any of them may have changed any user.
                tracing::warn!(
                    missed,
                    "user cache: eviction fell behind, dropping every local copy"
                );
                cache.evict_all_local();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        cache::{CacheRequests, CacheSettings},
        domain::{Email, FullName, Preferences},
    };

    /// Events this listener missed may have changed any user: it drops
    /// every local copy rather than serve one until its TTL runs out.
    #[tokio::test]
    async fn an_eviction_listener_that_fell_behind_drops_every_local_copy() {
        let settings = CacheSettings {
            l1_capacity: 100,
            l1_ttl: Duration::from_secs(300),
            redis_ttl: Duration::from_secs(300),
        };
        let cache = UserCache::new(&settings, None, CacheRequests::default());
        let user = User {
            id: UserId::generate(),
            email: Email::parse("ada@example.com").expect("an email"),
            full_name: FullName::parse("Ada").expect("a name"),
            status: UserStatus::Active,
            preferences: Preferences::default(),
            created_at_us: 1,
            updated_at_us: 1,
            version: 1,
        };
        cache.store(&user).await;
        assert!(cache.get(&user.id).await.is_some(), "cached");

        let (sender, events) = tokio::sync::broadcast::channel(4);
        let suspended = [("status", "suspended")];
        let change = ActivityEvent::now(user.id.as_str(), EventKind::UserStatusChanged, suspended);
        sender.send(Arc::new(change)).expect("a listener");
        for n in 0..8 {
            let order = ActivityEvent::now(
                "someone-else",
                EventKind::OrderCreated,
                [("n", n.to_string())],
            );
            sender.send(Arc::new(order)).expect("a listener");
        }
        drop(sender);
        follow_evictions(events, cache.clone(), CancellationToken::new()).await;

        assert!(
            cache.get(&user.id).await.is_none(),
            "the missed change may have been this user's"
        );
    }
}
