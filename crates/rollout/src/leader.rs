//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! controller replicas exactly one acts (client-go's leaderelection, in
//! the small): the leader renews the Lease every `renew`; a candidate takes
//! it only once the Lease has gone unchanged for `lease_duration` by its
//! own clock (so clock skew between nodes cannot shorten it). Every write
//! carries the resourceVersion it read, so two candidates racing for an
//! expired Lease cannot both win. A leader that cannot renew within
//! `renew_deadline` (each renewal bounded by what is left of it) stops
//! acting — aborting what has not stopped — before its Lease can expire,
//! and one that shuts down stops acting, then gives the Lease up.

use std::{future::Future, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    chrono::Utc,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How leadership is held.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's name (one per controller, in its namespace).
    pub lease: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease not renewed stays the holder's.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops acting (shorter
    /// than `lease_duration`, so it stops before anyone may take over).
    pub renew_deadline: Duration,
    /// How often the leader renews and a candidate tries.
    pub retry_period: Duration,
}

impl Election {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retries.
    pub fn new(lease: &str, identity: &str) -> Self {
        Self {
            lease: lease.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Runs `lead` whenever this replica holds the Lease, with a token that is
/// cancelled when leadership is lost (or `shutdown` completes); `lead` must
/// return soon after, and is aborted if it has not by the time another
/// replica could take the Lease. Returns once `shutdown` completes, having
/// stopped acting and then given the Lease up. `leading` is called with each
/// answer: `true` when this replica starts leading, `false` while another
/// one does and when this one stops.
pub async fn run<F, Fut>(
    client: Client,
    namespace: &str,
    election: Election,
    shutdown: impl Future<Output = ()>,
    leading: impl Fn(bool),
    lead: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let leases: Api<Lease> = Api::namespaced(client, namespace);
    let mut seen = Seen::default();
    tokio::pin!(shutdown);
    loop {
        // Candidate: try until the Lease is ours (nothing to give up yet).
        loop {
            let attempt = tokio::time::timeout(
                election.retry_period.max(Duration::from_secs(1)),
                try_acquire_or_renew(&leases, &election, &mut seen),
            );
            let answer = tokio::select! {
                answer = attempt => answer,
                () = &mut shutdown => return,
            };
            match answer {
                Ok(Ok(true)) => break,
                // Another replica leads: this one is a ready standby.
                Ok(Ok(false)) => leading(false),
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election: cannot reach the Lease"),
                Err(_) => tracing::warn!("leader election: the API server did not answer in time"),
            }
            tokio::select! {
                () = tokio::time::sleep(election.retry_period) => {}
                () = &mut shutdown => return,
            }
        }
        tracing::info!(identity = %election.identity, "leading");
        leading(true);
        let lost = CancellationToken::new();
        // Aborted if this future is dropped (its task aborted): acting never
        // outlives the election that allowed it.
        let mut acting = Acting(tokio::spawn(lead(lost.clone())));
        // Leader: renew, each attempt bounded by what is left of the renew
        // deadline, until that deadline passes unrenewed.
        let mut renewed = tokio::time::Instant::now();
        let mut finished = false;
        let stopping = loop {
            tokio::select! {
                () = tokio::time::sleep(election.retry_period) => {}
                () = &mut shutdown => break true,
                _ = &mut acting.0 => {
                    tracing::warn!("the controller stopped by itself");
                    finished = true;
                    break true;
                }
            }
            let left = election.renew_deadline.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, try_acquire_or_renew(&leases, &election, &mut seen))
                .await
            {
                Ok(Ok(true)) => renewed = tokio::time::Instant::now(),
                Ok(Ok(false)) => break false,
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election: renewal failed"),
                Err(_) => tracing::warn!("leader election: renewal timed out"),
            }
            if renewed.elapsed() >= election.renew_deadline {
                break false;
            }
        };
        if !stopping {
            tracing::warn!(identity = %election.identity, "leadership lost: stopping");
        }
        // Stop acting before another replica may take over: it may once the
        // Lease has gone unrenewed for its duration.
        lost.cancel();
        let grace = election
            .lease_duration
            .saturating_sub(renewed.elapsed())
            .min(Duration::from_secs(10));
        if !finished && tokio::time::timeout(grace, &mut acting.0).await.is_err() {
            acting.0.abort();
            let _ = (&mut acting.0).await;
        }
        leading(false);
        if stopping {
            release(&leases, &election).await;
            return;
        }
    }
}

/// The controller's task while this replica leads, aborted when dropped.
struct Acting(tokio::task::JoinHandle<()>);

impl Drop for Acting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What this replica last saw of the Lease, and when (its own clock): a
/// holder's Lease expires once it has gone unchanged for its duration as
/// this replica measures it, whatever the holder's clock wrote in it.
#[derive(Debug, Default)]
pub struct Seen {
    record: Option<String>,
    at: Option<tokio::time::Instant>,
}

impl Seen {
    fn observe(&mut self, spec: &LeaseSpec) -> tokio::time::Instant {
        let record = format!("{:?}/{:?}", spec.holder_identity, spec.renew_time);
        if self.record.as_deref() != Some(record.as_str()) || self.at.is_none() {
            self.record = Some(record);
            self.at = Some(tokio::time::Instant::now());
        }
        self.at.unwrap_or_else(tokio::time::Instant::now)
    }
}

/// One attempt: create the Lease held by us, renew it if ours, take it
/// over if its holder gave it up or let it go unrenewed (as `seen`
/// measures) for its duration. Whether we hold it now.
pub async fn try_acquire_or_renew(
    leases: &Api<Lease>,
    election: &Election,
    seen: &mut Seen,
) -> Result<bool, kube::Error> {
    let now = Utc::now();
    let seconds = i32::try_from(election.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(current) = leases.get_opt(&election.lease).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(election.lease.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(election.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Another candidate created it first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(election.identity.as_str());
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    let unchanged_since = seen.observe(&spec);
    if !ours && spec.holder_identity.is_some() && unchanged_since.elapsed() <= duration {
        return Ok(false);
    }
    let mut patch = json!({
        "metadata": { "resourceVersion": current.metadata.resource_version },
        "spec": {
            "holderIdentity": election.identity,
            "leaseDurationSeconds": seconds,
            "renewTime": MicroTime(now),
        },
    });
    if !ours {
        patch["spec"]["acquireTime"] = json!(MicroTime(now));
        patch["spec"]["leaseTransitions"] = json!(spec.lease_transitions.unwrap_or(0) + 1);
    }
    match leases
        .patch(
            &election.lease,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        // Someone wrote it since we read it: not ours this round.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up if we hold it, so the next candidate need not wait
/// for it to expire.
async fn release(leases: &Api<Lease>, election: &Election) {
    let Ok(Some(current)) = leases.get_opt(&election.lease).await else {
        return;
    };
    let holder = current
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref());
    if holder != Some(election.identity.as_str()) {
        return;
    }
    let patch = json!({
        "metadata": { "resourceVersion": current.metadata.resource_version },
        "spec": { "holderIdentity": null, "renewTime": null },
    });
    if let Err(e) = leases
        .patch(
            &election.lease,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(error = %e, "leader election: could not give the Lease up");
    }
}
