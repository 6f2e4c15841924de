//! A Stripe adapter: PaymentIntents and Refunds over HTTPS.
//!
//! | our call | Stripe |
//! |---|---|
//! | `create_intent` | `POST /v1/payment_intents` (`capture_method=automatic`, `payment_method_types[]=card`, our key and order id in `metadata`; `Idempotency-Key`: our key) |
//! | `confirm` | `POST /v1/payment_intents/{id}/confirm` (`Idempotency-Key`: `confirm-{id}-{attempt}`) |
//! | `cancel` | `POST /v1/payment_intents/{id}/cancel` (`Idempotency-Key`: `cancel-{id}-{attempt}`) |
//! | `intent` | `GET /v1/payment_intents/{id}` |
//! | `refund` | `POST /v1/refunds` (`payment_intent`, `amount`, our key in `metadata`; `Idempotency-Key`: our key) |
//! | `find_refund` | `GET /v1/refunds?payment_intent={id}`, matched by `metadata[idempotency_key]` |
//!
//! Amounts are minor units, as Stripe takes them (for zero-decimal
//! currencies such as JPY the minor unit is the unit: the same number).
//!
//! Capture is automatic: the confirm takes the money, and the saga's
//! compensation after a charge is a refund (see docs/payments.md for why,
//! and for the authorize-then-capture alternative).
//!
//! What an answer means: a connection never made is
//! [`ProviderError::Unavailable`] (nothing sent), as is `429` (Stripe did
//! not act on it). `400`/`401`/`403`/`404` on a call that creates or moves
//! money is [`ProviderError::Refused`] — except on a confirm or cancel,
//! where Stripe refuses because of the intent's state, so the adapter reads
//! the intent back and answers that state; `402` on a confirm is a decline,
//! read back the same way. A timeout, a connection lost after sending, a
//! `5xx` or `409` (a request with the same key still running) or a body we
//! cannot read is [`ProviderError::Unknown`].
//!
//! Charges do not depend on Stripe honouring `Idempotency-Key` (the
//! emulator the tests run against, localstripe, ignores it): an intent
//! takes money only when confirmed by the id we recorded, so an intent
//! created twice is one left open, never a second charge. A refund is
//! re-sent (after a taken-over key's look-up by our key found nothing)
//! under the same `Idempotency-Key`: only that keeps a first attempt still
//! on the wire from refunding twice, and a provider that ignores the header
//! (localstripe) could. A refund refused on such a re-send is looked up
//! again before its reservation is released.

use std::time::Duration;

use mercato_api::Money;
use mercato_api::Secret;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::{
    Intent, IntentState, NewIntent, PaymentProvider, ProviderError, ProviderRecord, Refund,
};

/// Stripe's own API.
pub const STRIPE_API_BASE: &str = "https://api.stripe.com";

/// Where Stripe is and the secret key to call it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StripeSettings {
    /// The API's base URL: Stripe's, or an emulator's.
    pub stripe_api_base: String,
    /// The file holding the secret key (`sk_live_…`, `sk_test_…`): a
    /// mounted Kubernetes Secret.
    pub stripe_secret_key_file: String,
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self {
            stripe_api_base: STRIPE_API_BASE.to_owned(),
            stripe_secret_key_file: String::new(),
        }
    }
}

/// A payment provider backed by Stripe's API.
#[derive(Debug, Clone)]
pub struct StripeProvider {
    http: reqwest::Client,
    base: String,
    secret_key: Secret,
}

/// A PaymentIntent, as much as we read of it.
#[derive(Debug, Deserialize)]
struct StripeIntent {
    id: String,
    amount: i64,
    currency: String,
    status: String,
    #[serde(default)]
    created: i64,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
    #[serde(default)]
    last_payment_error: Option<StripeError>,
}

/// Stripe's `error` object (also `last_payment_error`).
#[derive(Debug, Default, Deserialize)]
struct StripeError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: StripeError,
}

#[derive(Debug, Deserialize)]
struct StripeRefund {
    id: String,
    amount: i64,
    #[serde(default)]
    payment_intent: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
}

/// One page of a Stripe list.
#[derive(Debug, Deserialize)]
struct Page<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
}

/// What an HTTP exchange with Stripe came to.
enum Answer {
    /// 2xx: the body.
    Ok(Vec<u8>),
    /// A 4xx Stripe answered (it did not act), with its error.
    Rejected(StatusCode, StripeError),
}

impl StripeError {
    /// Our reason for a decline or a refusal: Stripe's decline code or
    /// code, then its message.
    fn reason(&self) -> String {
        let code = self
            .decline_code
            .as_deref()
            .or(self.code.as_deref())
            .or(self.kind.as_deref())
            .unwrap_or("refused");
        match &self.message {
            Some(message) => format!("{code}: {message}"),
            None => code.to_owned(),
        }
    }
}

impl StripeProvider {
    /// A provider calling `settings.stripe_api_base` with the key read
    /// from `settings.stripe_secret_key_file`; connecting gives up after
    /// `connect_timeout` (each whole call is bounded by the caller).
    pub fn new(settings: &StripeSettings, connect_timeout: Duration) -> Result<Self, String> {
        if settings.stripe_secret_key_file.is_empty() {
            return Err(
                "stripe_secret_key_file must name the file holding the Stripe secret key".into(),
            );
        }
        let key = std::fs::read_to_string(&settings.stripe_secret_key_file).map_err(|e| {
            format!(
                "cannot read stripe_secret_key_file {}: {e}",
                settings.stripe_secret_key_file
            )
        })?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!(
                "stripe_secret_key_file {} is empty",
                settings.stripe_secret_key_file
            ));
        }
        let base = settings.stripe_api_base.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(format!(
                "stripe_api_base must be an http(s) URL, got {:?}",
                settings.stripe_api_base
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .user_agent(concat!("mercato-payment/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self {
            http,
            base,
            secret_key: Secret::new(key.to_owned()),
        })
    }

    /// One call: `form` as the body of a POST (with `idempotency_key`), or
    /// as the query of a GET.
    async fn send(
        &self,
        method: Method,
        path: &str,
        form: &[(&str, String)],
        idempotency_key: Option<&str>,
    ) -> Result<Answer, ProviderError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(self.secret_key.expose())
            .header("Stripe-Version", "2024-06-20");
        request = if method == Method::GET {
            request.query(form)
        } else {
            request.form(form)
        };
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.map_err(|e| {
            // Not connected, or a request that could not even be built (a
            // header value it cannot carry): nothing was sent.
            if e.is_connect() || e.is_builder() {
                ProviderError::Unavailable(format!("{method} {path}: {e}"))
            } else {
                ProviderError::Unknown(format!("{method} {path}: {e}"))
            }
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            ProviderError::Unknown(format!("{method} {path}: reading the answer: {e}"))
        })?;
        if status.is_success() {
            return Ok(Answer::Ok(body.to_vec()));
        }
        let error = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_default();
        match status {
            StatusCode::TOO_MANY_REQUESTS => Err(ProviderError::Unavailable(format!(
                "{method} {path}: rate limited ({})",
                error.reason()
            ))),
            StatusCode::BAD_REQUEST
            | StatusCode::UNAUTHORIZED
            | StatusCode::PAYMENT_REQUIRED
            | StatusCode::FORBIDDEN
            | StatusCode::NOT_FOUND => Ok(Answer::Rejected(status, error)),
            _ => Err(ProviderError::Unknown(format!(
                "{method} {path}: {status} ({})",
                error.reason()
            ))),
        }
    }

    /// A call whose 4xx answers are refusals.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        form: &[(&str, String)],
        idempotency_key: Option<&str>,
    ) -> Result<T, ProviderError> {
        match self.send(method, path, form, idempotency_key).await? {
            Answer::Ok(body) => parse(path, &body),
            Answer::Rejected(status, error) => Err(ProviderError::Refused(format!(
                "{path}: {status}: {}",
                error.reason()
            ))),
        }
    }

    /// A confirm or cancel: a refusal is read back as the intent's state.
    async fn move_intent(&self, intent_id: &str, action: &str) -> Result<Intent, ProviderError> {
        let path = format!("/v1/payment_intents/{intent_id}/{action}");
        // One key per attempt: Stripe replays a key's first answer for a
        // day, a 500 included, which would keep a charge unknown that long.
        // The intent itself makes a repeated confirm harmless.
        let key = format!("{action}-{intent_id}-{}", uuid::Uuid::new_v4().simple());
        match self.send(Method::POST, &path, &[], Some(&key)).await? {
            Answer::Ok(body) => intent_of(parse(&path, &body)?),
            Answer::Rejected(StatusCode::NOT_FOUND, error) => Err(ProviderError::Refused(format!(
                "no such intent {intent_id}: {}",
                error.reason()
            ))),
            // A decline (402), or a state that does not allow it (400):
            // what matters is where the intent stands now.
            Answer::Rejected(status, error) => {
                tracing::debug!(intent_id, action, %status, reason = error.reason(), "Stripe refused; reading the intent");
                self.intent(intent_id)
                    .await?
                    .ok_or_else(|| ProviderError::Refused(format!("no such intent {intent_id}")))
            }
        }
    }
}

impl StripeProvider {
    /// Every page of a list, newest first as Stripe lists; `enough` says
    /// when the items seen so far make further pages useless.
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        id_of: impl Fn(&T) -> &str,
        enough: impl Fn(&[T]) -> bool,
    ) -> Result<Vec<T>, ProviderError> {
        let mut all = Vec::new();
        let mut form = vec![("limit", "100".to_owned())];
        loop {
            let page: Page<T> = match self.send(Method::GET, path, &form, None).await? {
                Answer::Ok(body) => parse(path, &body)?,
                Answer::Rejected(status, error) => {
                    return Err(ProviderError::Unknown(format!(
                        "{path}: {status}: {}",
                        error.reason()
                    )));
                }
            };
            let last = page.data.last().map(|item| id_of(item).to_owned());
            let stop = enough(&page.data);
            all.extend(page.data);
            match last {
                Some(last) if page.has_more && !stop => {
                    form.retain(|(name, _)| *name != "starting_after");
                    form.push(("starting_after", last));
                }
                _ => return Ok(all),
            }
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, ProviderError> {
    serde_json::from_slice(body)
        .map_err(|e| ProviderError::Unknown(format!("{path}: unreadable answer: {e}")))
}

/// Our view of a Stripe PaymentIntent.
fn intent_of(intent: StripeIntent) -> Result<Intent, ProviderError> {
    let state = match intent.status.as_str() {
        "requires_payment_method" => match &intent.last_payment_error {
            Some(error) => IntentState::Declined {
                reason: error.reason(),
            },
            None => IntentState::Open,
        },
        "requires_confirmation" => IntentState::Open,
        // 3-D Secure and the like: our server-side confirm cannot go on.
        "requires_action" => IntentState::Declined {
            reason: "authentication_required: the payment method needs the customer's action"
                .into(),
        },
        "processing" | "requires_capture" => IntentState::Processing,
        "succeeded" => IntentState::Succeeded,
        "canceled" => IntentState::Canceled,
        other => {
            return Err(ProviderError::Unknown(format!(
                "intent {} in an unknown status {other:?}",
                intent.id
            )));
        }
    };
    Ok(Intent {
        id: intent.id,
        amount: Money {
            currency: intent.currency.to_ascii_uppercase(),
            minor: intent.amount,
        },
        state,
    })
}

fn refund_of(refund: StripeRefund) -> Result<Refund, ProviderError> {
    match refund.status.as_deref() {
        Some("failed" | "canceled") => Err(ProviderError::Refused(format!(
            "refund {} {}",
            refund.id,
            refund.status.unwrap_or_default()
        ))),
        _ => Ok(Refund {
            id: refund.id,
            amount_minor: refund.amount,
        }),
    }
}

#[async_trait::async_trait]
impl PaymentProvider for StripeProvider {
    fn accepts(&self, payment_method: &str) -> bool {
        payment_method.starts_with("pm_") && payment_method.len() <= 255
    }

    fn payment_methods(&self) -> String {
        "Stripe PaymentMethod ids (pm_…)".into()
    }

    async fn create_intent(&self, new: NewIntent<'_>) -> Result<Intent, ProviderError> {
        let form = [
            ("amount", new.amount.minor.to_string()),
            ("currency", new.amount.currency.to_ascii_lowercase()),
            ("payment_method", new.payment_method.to_owned()),
            ("payment_method_types[]", "card".to_owned()),
            ("capture_method", "automatic".to_owned()),
            ("metadata[idempotency_key]", new.idempotency_key.to_owned()),
            ("metadata[order_id]", new.order_id.to_owned()),
        ];
        let intent: StripeIntent = self
            .call(
                Method::POST,
                "/v1/payment_intents",
                &form,
                Some(new.idempotency_key),
            )
            .await?;
        intent_of(intent)
    }

    async fn confirm(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        self.move_intent(intent_id, "confirm").await
    }

    async fn cancel(&self, intent_id: &str) -> Result<Intent, ProviderError> {
        self.move_intent(intent_id, "cancel").await
    }

    async fn intent(&self, intent_id: &str) -> Result<Option<Intent>, ProviderError> {
        let path = format!("/v1/payment_intents/{intent_id}");
        match self.send(Method::GET, &path, &[], None).await? {
            Answer::Ok(body) => intent_of(parse(&path, &body)?).map(Some),
            Answer::Rejected(StatusCode::NOT_FOUND, _) => Ok(None),
            // A read that Stripe refuses (a bad key) tells nothing.
            Answer::Rejected(status, error) => Err(ProviderError::Unknown(format!(
                "{path}: {status}: {}",
                error.reason()
            ))),
        }
    }

    async fn refund(
        &self,
        idempotency_key: &str,
        intent_id: &str,
        amount: &Money,
    ) -> Result<Refund, ProviderError> {
        let form = [
            ("payment_intent", intent_id.to_owned()),
            ("amount", amount.minor.to_string()),
            ("metadata[idempotency_key]", idempotency_key.to_owned()),
        ];
        let refund: StripeRefund = self
            .call(Method::POST, "/v1/refunds", &form, Some(idempotency_key))
            .await?;
        refund_of(refund)
    }

    async fn find_refund(
        &self,
        idempotency_key: &str,
        intent_id: &str,
    ) -> Result<Option<Refund>, ProviderError> {
        let mut form = vec![
            ("payment_intent", intent_id.to_owned()),
            ("limit", "100".to_owned()),
        ];
        loop {
            let path = "/v1/refunds";
            let page: Page<StripeRefund> = match self.send(Method::GET, path, &form, None).await? {
                Answer::Ok(body) => parse(path, &body)?,
                Answer::Rejected(status, error) => {
                    return Err(ProviderError::Unknown(format!(
                        "{path}: {status}: {}",
                        error.reason()
                    )));
                }
            };
            let last = page.data.last().map(|r| r.id.clone());
            // A failed or cancelled refund moved nothing: as if none.
            if let Some(found) = page.data.into_iter().find(|r| {
                r.metadata.get("idempotency_key").map(String::as_str) == Some(idempotency_key)
                    && !matches!(r.status.as_deref(), Some("failed" | "canceled"))
            }) {
                return refund_of(found).map(Some);
            }
            match last {
                Some(last) if page.has_more => {
                    form.retain(|(name, _)| *name != "starting_after");
                    form.push(("starting_after", last));
                }
                _ => return Ok(None),
            }
        }
    }

    async fn records(
        &self,
        since_us: i64,
        until_us: i64,
    ) -> Result<Vec<ProviderRecord>, ProviderError> {
        const MICROS: i64 = 1_000_000;
        // Stripe lists newest first: a page whose oldest is older than the
        // window ends the listing. (localstripe lists oldest first: then
        // every page is read.) Its `created[gte]` filter is not used, as
        // localstripe refuses it.
        let intents: Vec<StripeIntent> = self
            .list(
                "/v1/payment_intents",
                |i: &StripeIntent| &i.id,
                |page| match (page.first(), page.last()) {
                    (Some(first), Some(last)) => {
                        first.created >= last.created && last.created * MICROS < since_us
                    }
                    _ => true,
                },
            )
            .await?;
        let refunds: Vec<StripeRefund> = self
            .list("/v1/refunds", |r: &StripeRefund| &r.id, |_| false)
            .await?;
        let mut refunded = std::collections::HashMap::<String, i64>::new();
        for refund in refunds {
            if matches!(refund.status.as_deref(), Some("failed" | "canceled")) {
                continue;
            }
            if let Some(intent) = refund.payment_intent {
                *refunded.entry(intent).or_default() += refund.amount;
            }
        }
        intents
            .into_iter()
            .filter(|i| (since_us..until_us).contains(&(i.created * MICROS)))
            .filter_map(|i| {
                let key = i.metadata.get("idempotency_key")?.clone();
                Some((key, i))
            })
            .map(|(idempotency_key, i)| {
                let created_at_us = i.created * MICROS;
                let refunded_minor = refunded.get(&i.id).copied().unwrap_or_default();
                Ok(ProviderRecord {
                    intent: intent_of(i)?,
                    idempotency_key,
                    refunded_minor,
                    created_at_us,
                })
            })
            .collect()
    }
}
