//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! controller replicas exactly one acts (client-go's leaderelection, in
//! the small): the leader renews the Lease every `renew`; a candidate takes
//! it only once the holder has not renewed for `lease_duration`. Every
//! write carries the resourceVersion it read, so two candidates racing for
//! an expired Lease cannot both win. A leader that cannot renew within
//! `renew_deadline` stops acting before its Lease can expire, and one that
//! shuts down gives the Lease up at once.

use std::{future::Future, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    chrono::{DateTime, Utc},
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
/// return soon after. Returns once `shutdown` completes, having given the
/// Lease up if it held it. `leading` is called with each answer: `true`
/// when this replica starts leading, `false` while another one does and
/// when this one stops.
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
    let stop = CancellationToken::new();
    let elect = async {
        loop {
            // Candidate: try until the Lease is ours.
            loop {
                match try_acquire_or_renew(&leases, &election).await {
                    Ok(true) => break,
                    // Another replica leads: this one is a ready standby.
                    Ok(false) => leading(false),
                    Err(e) => tracing::warn!(error = %e, "leader election: cannot reach the Lease"),
                }
                tokio::time::sleep(election.retry_period).await;
            }
            tracing::info!(identity = %election.identity, "leading");
            leading(true);
            let lost = stop.child_token();
            let acting = tokio::spawn(lead(lost.clone()));
            // Leader: renew until a renewal deadline passes unrenewed.
            let mut renewed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(election.retry_period).await;
                match try_acquire_or_renew(&leases, &election).await {
                    Ok(true) => renewed = tokio::time::Instant::now(),
                    Ok(false) => break,
                    Err(e) => tracing::warn!(error = %e, "leader election: renewal failed"),
                }
                if renewed.elapsed() >= election.renew_deadline {
                    break;
                }
            }
            tracing::warn!(identity = %election.identity, "leadership lost: stopping");
            lost.cancel();
            let _ = acting.await;
            leading(false);
        }
    };
    tokio::select! {
        () = elect => {}
        () = shutdown => {}
    }
    stop.cancel();
    release(&leases, &election).await;
}

fn expired(lease: &LeaseSpec, now: DateTime<Utc>) -> bool {
    let Some(MicroTime(renewed)) = lease.renew_time else {
        return true;
    };
    let duration = i64::from(lease.lease_duration_seconds.unwrap_or(0));
    now - renewed > k8s_openapi::chrono::Duration::seconds(duration)
}

/// One attempt: create the Lease held by us, renew it if ours, take it
/// over if its holder let it expire. Whether we hold it now.
pub async fn try_acquire_or_renew(
    leases: &Api<Lease>,
    election: &Election,
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
    if !ours && spec.holder_identity.is_some() && !expired(&spec, now) {
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
