//! API keys for services and integrations (`x-api-key: <key>`).
//!
//! A key reads `mk_<id>_<secret><checksum>`: a type prefix, a public id (12
//! characters, what operators list and revoke), a 32-character secret and a
//! 6-character CRC-32 checksum of the rest, so a mistyped or made-up key is
//! refused without touching storage. Only the SHA-256 of the secret is
//! stored — the key is shown once, at creation — and it is compared in
//! constant time. Keys expire and can be revoked; each key has a rate limit.

use std::{collections::HashMap, sync::Arc, time::Duration};

use aws_lc_rs::{constant_time::verify_slices_are_equal, digest};
use serde::{Deserialize, Serialize};

use crate::{
    AuthError, Principal,
    limits::{Gcra, Quota},
};

const PREFIX: &str = "mk_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const CHECK_LEN: usize = 6;
const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What is stored about a key: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// The public part, e.g. `a1B2c3D4e5F6`.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Whom the key acts for (the principal's subject), e.g. `order-service`.
    pub owner: String,
    pub roles: Vec<String>,
    /// Epoch seconds after which the key is refused; `None`: no expiry.
    pub expires_at: Option<i64>,
    /// Epoch seconds when it was revoked; `None`: active.
    pub revoked_at: Option<i64>,
    /// Calls per second allowed (burst of the same size); 0: unlimited.
    pub rate_per_sec: u32,
}

/// A key store could not be asked (its database is down): whether the key
/// is valid is unknown, so the call is UNAVAILABLE, not UNAUTHENTICATED.
#[derive(Debug, Clone, thiserror::Error)]
#[error("API key store unavailable: {0}")]
pub struct KeyStoreUnavailable(pub String);

/// Where key records live (the user service's database, or settings for
/// service keys provisioned from a Secret).
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The record with this id, if any.
    async fn find(&self, id: &str) -> Result<Option<ApiKeyRecord>, KeyStoreUnavailable>;

    /// Whether this store holds the id in memory (looking costs nothing).
    fn holds_in_memory(&self, _id: &str) -> bool {
        false
    }
}

/// Several stores asked in order; the first that knows the id answers.
#[derive(Default)]
pub struct KeyStores(pub Vec<Box<dyn KeyStore>>);

impl std::fmt::Debug for KeyStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStores")
            .field("stores", &self.0.len())
            .finish()
    }
}

#[async_trait::async_trait]
impl KeyStore for KeyStores {
    async fn find(&self, id: &str) -> Result<Option<ApiKeyRecord>, KeyStoreUnavailable> {
        for store in &self.0 {
            if let Some(found) = store.find(id).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn holds_in_memory(&self, id: &str) -> bool {
        self.0.iter().any(|store| store.holds_in_memory(id))
    }
}

/// Keys listed in settings.
#[derive(Debug, Clone, Default)]
pub struct StaticKeys(pub HashMap<String, ApiKeyRecord>);

#[async_trait::async_trait]
impl KeyStore for StaticKeys {
    async fn find(&self, id: &str) -> Result<Option<ApiKeyRecord>, KeyStoreUnavailable> {
        Ok(self.0.get(id).cloned())
    }

    fn holds_in_memory(&self, id: &str) -> bool {
        self.0.contains_key(id)
    }
}

/// A new key: give `key` to its owner once, store `record`.
#[derive(Debug)]
pub struct IssuedKey {
    pub key: String,
    pub record: ApiKeyRecord,
}

/// The system random number generator failed (no entropy source).
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

fn random_text(len: usize) -> Result<String, RandomError> {
    let mut bytes = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| RandomError)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn checksum(body: &str) -> String {
    let mut n = crc32(body.as_bytes());
    let mut out = vec![b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Lowercase hex of the secret's SHA-256, in one allocation (every call
/// carrying a key runs it: a `format!` per byte cost 32 more).
fn sha256_hex(secret: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = digest::digest(&digest::SHA256, secret.as_bytes());
    let mut out = String::with_capacity(2 * digest.as_ref().len());
    for byte in digest.as_ref() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// The key text for an id and a secret, checksum included.
pub fn compose_key(id: &str, secret: &str) -> String {
    let body = format!("{PREFIX}{id}_{secret}");
    format!("{body}{}", checksum(&body))
}

/// Creates a key for `owner` with `roles`.
pub fn issue(
    owner: &str,
    roles: Vec<String>,
    expires_at: Option<i64>,
    rate_per_sec: u32,
) -> Result<IssuedKey, RandomError> {
    let id = random_text(ID_LEN)?;
    let secret = random_text(SECRET_LEN)?;
    let key = compose_key(&id, &secret);
    Ok(IssuedKey {
        key,
        record: ApiKeyRecord {
            id,
            secret_sha256: sha256_hex(&secret),
            owner: owner.to_owned(),
            roles,
            expires_at,
            revoked_at: None,
            rate_per_sec,
        },
    })
}

/// Splits a presented key into (id, secret) if it is well formed.
fn parse(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    if rest.len() != ID_LEN + 1 + SECRET_LEN + CHECK_LEN || !rest.is_ascii() {
        return None;
    }
    let (body, check) = key.split_at(key.len() - CHECK_LEN);
    if checksum(body) != check {
        return None;
    }
    let (id, secret) = rest[..ID_LEN + 1 + SECRET_LEN].split_once('_')?;
    (id.len() == ID_LEN && secret.len() == SECRET_LEN).then_some((id, secret))
}

/// Enforces each key's calls-per-second budget.
#[async_trait::async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one call from `id`'s budget; `Err(wait)` when it is spent.
    async fn take(&self, id: &str, rate_per_sec: u32) -> Result<(), Duration>;
}

/// GCRA limits per key id, in process (one replica, or the monolith): a
/// burst of one second's calls, then the rate ([`crate::limits`]).
#[derive(Debug, Default)]
pub struct LocalRateLimiter {
    gcra: Gcra,
}

#[async_trait::async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn take(&self, id: &str, rate_per_sec: u32) -> Result<(), Duration> {
        self.take_now(id, rate_per_sec)
    }
}

impl LocalRateLimiter {
    /// Takes one call from `id`'s budget; `Err(wait)` when it is spent.
    pub fn take_now(&self, id: &str, rate_per_sec: u32) -> Result<(), Duration> {
        if rate_per_sec == 0 {
            return Ok(());
        }
        self.gcra.take(id, Quota::per_second(rate_per_sec))
    }
}

/// Why a key was refused, beyond "invalid".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefusal {
    Auth(AuthError),
    /// Over its rate limit: retry after this long.
    RateLimited(Duration),
}

/// How long an id the stores do not know is remembered as unknown.
pub const UNKNOWN_ID_TTL: Duration = Duration::from_secs(60);

/// Checks presented keys against a store.
pub struct ApiKeyVerifier {
    store: Box<dyn KeyStore>,
    limiter: Arc<dyn RateLimiter>,
    /// Ids the stores said they do not know, so the same made-up key costs
    /// one store query per [`UNKNOWN_ID_TTL`], not one per call. (Ids are
    /// 12 random characters: a key issued later never has one of them.)
    unknown: moka::sync::Cache<String, ()>,
}

impl std::fmt::Debug for ApiKeyVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyVerifier").finish_non_exhaustive()
    }
}

impl ApiKeyVerifier {
    /// Keys from `store`, rate-limited in process.
    pub fn new(store: impl KeyStore) -> Self {
        Self::with_limiter(store, LocalRateLimiter::default())
    }

    /// Keys from `store`, rate-limited by `limiter` (e.g. shared through Redis).
    pub fn with_limiter(store: impl KeyStore, limiter: impl RateLimiter) -> Self {
        Self::sharing_limiter(store, Arc::new(limiter))
    }

    /// Like [`ApiKeyVerifier::with_limiter`], with a limiter also used elsewhere.
    pub fn sharing_limiter(store: impl KeyStore, limiter: Arc<dyn RateLimiter>) -> Self {
        Self {
            store: Box::new(store),
            limiter,
            unknown: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(UNKNOWN_ID_TTL)
                .build(),
        }
    }

    /// Whether `key` names a key held in memory (from settings, e.g. a
    /// service's own), which costs nothing to check: such keys are checked
    /// whatever their peer's failed authentications.
    pub fn is_local(&self, key: &str) -> bool {
        parse(key).is_some_and(|(id, _)| self.store.holds_in_memory(id))
    }

    /// The principal the key speaks for, at `now` (epoch seconds).
    pub async fn verify(&self, key: &str, now: i64) -> Result<Principal, KeyRefusal> {
        let invalid = |why: &str| KeyRefusal::Auth(AuthError::Invalid(why.to_owned()));
        let (id, secret) = parse(key).ok_or_else(|| invalid("malformed API key"))?;
        if self.unknown.contains_key(id) {
            return Err(invalid("unknown API key id (remembered)"));
        }
        let Some(record) = self
            .store
            .find(id)
            .await
            .map_err(|e| KeyRefusal::Auth(AuthError::Unavailable(e.to_string())))?
        else {
            self.unknown.insert(id.to_owned(), ());
            return Err(invalid("unknown API key id"));
        };
        let presented = sha256_hex(secret);
        if verify_slices_are_equal(presented.as_bytes(), record.secret_sha256.as_bytes()).is_err() {
            return Err(invalid("wrong API key secret"));
        }
        if record.revoked_at.is_some() {
            return Err(invalid("revoked API key"));
        }
        if record.expires_at.is_some_and(|at| now >= at) {
            return Err(invalid("expired API key"));
        }
        self.limiter
            .take(&record.id, record.rate_per_sec)
            .await
            .map_err(KeyRefusal::RateLimited)?;
        Ok(Principal {
            subject: record.owner.into(),
            roles: record.roles.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored records hold this exact text: lowercase, two digits a byte.
    #[test]
    fn secret_digest_is_lowercase_hex_of_sha256() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn issued_keys_parse_and_typos_do_not() {
        let issued = issue("svc", vec!["service".into()], None, 0).expect("random bytes");
        let (id, secret) = parse(&issued.key).expect("well formed");
        assert_eq!(id, issued.record.id);
        assert_eq!(sha256_hex(secret), issued.record.secret_sha256);
        assert!(!issued.key.contains(&issued.record.secret_sha256));
        let mut typo = issued.key.clone().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        assert!(
            parse(std::str::from_utf8(&typo).unwrap_or_default()).is_none(),
            "checksum catches a typo"
        );
        assert!(parse("mk_short").is_none());
        assert_eq!(
            crc32(b"123456789"),
            0xCBF4_3926,
            "CRC-32/ISO-HDLC check value"
        );
    }

    struct Down;

    #[async_trait::async_trait]
    impl KeyStore for Down {
        async fn find(&self, _: &str) -> Result<Option<ApiKeyRecord>, KeyStoreUnavailable> {
            Err(KeyStoreUnavailable("database down".into()))
        }
    }

    #[tokio::test]
    async fn a_store_that_cannot_answer_makes_the_call_unavailable_not_unauthenticated() {
        let issued = issue("svc", vec!["service".into()], None, 0).expect("random bytes");
        let refusal = ApiKeyVerifier::new(KeyStores(vec![
            Box::new(StaticKeys::default()),
            Box::new(Down),
        ]))
        .verify(&issued.key, 0)
        .await
        .expect_err("cannot verify");
        assert!(
            matches!(refusal, KeyRefusal::Auth(AuthError::Unavailable(_))),
            "{refusal:?}"
        );
        let status = match refusal {
            KeyRefusal::Auth(e) => tonic::Status::from(e),
            KeyRefusal::RateLimited(_) => unreachable!(),
        };
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }

    /// Counts the queries that reach it.
    #[derive(Default)]
    struct Counting(Arc<std::sync::atomic::AtomicUsize>);

    #[async_trait::async_trait]
    impl KeyStore for Counting {
        async fn find(&self, _: &str) -> Result<Option<ApiKeyRecord>, KeyStoreUnavailable> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(None)
        }
    }

    /// The checksum is public, so anyone can mint well-formed keys: the
    /// same made-up key presented again costs no second store query.
    #[tokio::test]
    async fn a_made_up_key_costs_one_store_query_not_one_per_call() {
        let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let verifier = ApiKeyVerifier::new(Counting(queries.clone()));
        let made_up = issue("nobody", vec![], None, 0).expect("random bytes").key;
        for _ in 0..100 {
            let refusal = verifier.verify(&made_up, 0).await.expect_err("unknown");
            assert!(
                matches!(refusal, KeyRefusal::Auth(AuthError::Invalid(_))),
                "{refusal:?}"
            );
        }
        assert_eq!(queries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let limiter = LocalRateLimiter::default();
        for _ in 0..3 {
            assert!(limiter.take_now("k", 3).is_ok());
        }
        let wait = limiter.take_now("k", 3).expect_err("burst spent");
        assert!(wait <= Duration::from_millis(334), "{wait:?}");
        assert!(limiter.take_now("unlimited", 0).is_ok());
    }
}
