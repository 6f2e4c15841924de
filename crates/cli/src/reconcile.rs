//! `mercato reconcile`: the payment service's `Reconcile` RPC from a
//! terminal or a CronJob — every disagreement between the ledger and the
//! payment provider over a window, one per line; the exit status is 1 when
//! there is any (so a scheduled run can page), 0 when they agree.

use clap::Args;
use mercato_proto::payment::v1::{
    ReconcileRequest, mismatch::Kind, payment_service_client::PaymentServiceClient,
};
use tonic::{metadata::MetadataValue, transport::Endpoint};

#[derive(Debug, Args)]
pub(crate) struct ReconcileArgs {
    /// The payment service, host:port (`mercato up` serves every service there).
    #[arg(long, env = "MERCATO_PAYMENT_ADDR", default_value = "127.0.0.1:9090")]
    payment_addr: String,
    /// An admin's bearer token (`mercato token --sub ops --role admin`).
    #[arg(long, env = "MERCATO_TOKEN")]
    token: String,
    /// Hours the window covers; it ends two key leases ago (calls in
    /// flight before that have finished).
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// End the window now instead: calls still in flight then show as
    /// unsettled keys (for a check once traffic has stopped).
    #[arg(long)]
    until_now: bool,
}

/// Runs one reconciliation and prints it; `Err` names the mismatches.
pub(crate) async fn run(args: ReconcileArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !(args.hours > 0.0 && args.hours <= 31.0 * 24.0) {
        return Err("--hours must be more than 0 and at most 744 (31 days)".into());
    }
    let uri = if args.payment_addr.contains("://") {
        args.payment_addr.clone()
    } else {
        format!("http://{}", args.payment_addr)
    };
    let channel = Endpoint::from_shared(uri)?.connect().await?;
    let bearer: MetadataValue<_> = format!("Bearer {}", args.token).parse()?;
    let mut client =
        PaymentServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        });
    // The window starts `hours` ago and ends where the server says (two
    // key leases ago), or now.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let start = now.saturating_sub(std::time::Duration::from_secs_f64(args.hours * 3600.0));
    let at = |t: std::time::Duration| -> Result<prost_types::Timestamp, std::num::TryFromIntError> {
        Ok(prost_types::Timestamp {
            seconds: i64::try_from(t.as_secs())?,
            nanos: i32::try_from(t.subsec_nanos())?,
        })
    };
    let report = client
        .reconcile(ReconcileRequest {
            start_time: Some(at(start)?),
            end_time: args.until_now.then(|| at(now)).transpose()?,
        })
        .await?
        .into_inner();
    let end = report.end_time.unwrap_or_default();
    println!(
        "reconciled the {} h before {} (epoch seconds): {} provider records, {} ledger payments",
        args.hours, end.seconds, report.provider_records, report.ledger_payments
    );
    for m in &report.mismatches {
        let kind = Kind::try_from(m.kind).unwrap_or(Kind::Unspecified);
        println!(
            "{:<14} key={} payment={} provider={}: {}",
            kind.as_str_name().to_ascii_lowercase(),
            m.idempotency_key,
            m.payment_id,
            m.provider_reference,
            m.detail
        );
    }
    match report.mismatches.len() {
        0 => {
            println!("the ledger and the provider agree");
            Ok(())
        }
        n => Err(format!("{n} disagreements between the ledger and the provider").into()),
    }
}
