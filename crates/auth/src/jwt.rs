//! JWT verification against configured public keys.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
use serde::{Deserialize, Serialize};

use crate::{AuthError, Principal};

/// The most clock skew tolerated on `exp` and `nbf`.
pub const MAX_LEEWAY_SECS: u64 = 30;

/// Where the verification keys come from and what tokens must say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtSettings {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (one of the token's audiences).
    pub audience: String,
    /// Seconds of clock skew tolerated on `exp`/`nbf` (capped at 30).
    pub leeway_secs: u64,
    /// PEM public keys (RSA, P-256 or Ed25519); the file stem is the `kid`.
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS document (`{"keys": [...]}`), re-read every
    /// `jwks_refresh_secs` and on an unknown `kid`.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS endpoint (https, or http inside a cluster), fetched on first
    /// use, every `jwks_refresh_secs` and on an unknown `kid`. Never taken
    /// from a token's header.
    pub jwks_url: Option<String>,
    /// Seconds between scheduled re-reads of the JWKS file or URL, whatever
    /// the tokens say: a key removed from the set stops verifying (and the
    /// tokens remembered under it are checked again) within this long.
    /// 0: no scheduled re-read.
    pub jwks_refresh_secs: u64,
    /// Least seconds between two re-reads caused by tokens with an unknown
    /// `kid` (a new key of the issuer). Kept apart from the schedule, so
    /// made-up `kid`s cost at most one read per this long and cannot delay
    /// a real new key by more than it. 0: every unknown `kid` re-reads.
    pub jwks_unknown_kid_refresh_secs: u64,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            issuer: "mercato".into(),
            audience: "mercato".into(),
            leeway_secs: 30,
            public_key_files: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 60,
            jwks_unknown_kid_refresh_secs: 5,
        }
    }
}

/// A verification key and the one algorithm it accepts.
#[derive(Clone)]
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

/// The claims mercato reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Epoch seconds; required (the validation says so).
    exp: u64,
    #[serde(default)]
    roles: Vec<String>,
}

/// Verifies bearer tokens; cheap to share behind an `Arc`.
pub struct JwtVerifier {
    settings: JwtSettings,
    /// For `jwks_url`; redirects are not followed to other hosts' keys.
    /// Built on the first fetch: building one loads the system's CA roots,
    /// 30-60 ms of a service's start that a verifier without a URL never
    /// needs.
    http: std::sync::OnceLock<reqwest::Client>,
    /// From PEM files, by `kid`; fixed for the process's life.
    pem_keys: HashMap<String, Key>,
    /// From the JWKS file, by `kid`; replaced on each refresh, so a key
    /// removed from the set stops verifying, and one added starts.
    keys: RwLock<HashMap<String, Key>>,
    /// SHA-256 of the JWKS text last installed: an unchanged set keeps the
    /// remembered tokens.
    keys_digest: std::sync::Mutex<Option<[u8; 32]>>,
    /// When the next scheduled re-read is due, in milliseconds since
    /// `started` (`u64::MAX`: none yet; an atomic, as every call looks).
    next_reload_ms: std::sync::atomic::AtomicU64,
    started: Instant,
    /// When an unknown `kid` last caused a re-read (for its own limit).
    last_unknown_kid: std::sync::Mutex<Option<Instant>>,
    /// Tokens verified lately, by the whole token: a signature check costs
    /// tens of microseconds, more than the rest of a cached GetUser. An
    /// entry is used only before the token's `exp` (the leeway applies to
    /// full verifications only), only under the key set it was verified
    /// with, and for at most [`VERIFIED_TTL`] (Envoy's jwt_authn caches
    /// verified tokens the same way). A hit compares the whole token, so
    /// the table's hash need not resist collisions: it is a fast seeded
    /// one (a SHA-256 digest as the key cost more than the rest of the
    /// lookup), and only tokens that verified are ever inserted.
    verified: VerifiedTokens,
    /// Bumped whenever the key set is replaced: remembered tokens verified
    /// under an older set are checked again, so a retired key stops
    /// authenticating as soon as the verifier learns of it.
    key_generation: std::sync::atomic::AtomicU64,
}

/// How many bytes of verified tokens are remembered (a token weighs its
/// length, so 4 MiB is some 10 000 typical tokens and a few hundred of
/// the largest a header allows).
const VERIFIED_CAPACITY_BYTES: u64 = 4 << 20;
/// Longest a verified token is remembered, whatever its `exp`.
const VERIFIED_TTL: Duration = Duration::from_secs(60);

/// A token [`JwtVerifier::remembered`] did not know, for the full check.
#[derive(Debug)]
pub struct Unremembered {
    key_generation: u64,
}

/// A token that verified, and until when that may be relied on.
#[derive(Debug)]
struct Verified {
    principal: Principal,
    exp: u64,
    key_generation: u64,
}

type VerifiedTokens = moka::sync::Cache<Arc<str>, Arc<Verified>, foldhash::fast::RandomState>;

fn verified_cache() -> VerifiedTokens {
    moka::sync::Cache::builder()
        .max_capacity(VERIFIED_CAPACITY_BYTES)
        .weigher(|token: &Arc<str>, _| u32::try_from(token.len()).unwrap_or(u32::MAX))
        .time_to_live(VERIFIED_TTL)
        .build_with_hasher(foldhash::fast::RandomState::default())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The SHA-256 of a key set's text: a re-read that finds the same text
/// changes nothing.
fn text_digest(text: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<String> = self.pem_keys.keys().cloned().collect();
        kids.extend(
            self.keys
                .read()
                .map(|k| k.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.settings.issuer)
            .field("kids", &kids)
            .finish()
    }
}

/// The verification keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load JWT keys: {0}")]
pub struct KeyError(pub(crate) String);

/// The algorithm a PEM key implies, with the key.
fn key_from_pem(pem: &[u8]) -> Result<Key, KeyError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Key {
            algorithm: Algorithm::RS256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(Key {
            algorithm: Algorithm::ES256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok(Key {
            algorithm: Algorithm::EdDSA,
            key,
        });
    }
    Err(KeyError(
        "not an RSA, P-256 or Ed25519 public key in PEM".into(),
    ))
}

/// A key set as loaded, with the digest of its text.
type Loaded = (HashMap<String, Key>, [u8; 32]);

fn read_jwks(path: &PathBuf) -> Result<Loaded, KeyError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
    let keys = parse_jwks(&text).map_err(|e| KeyError(format!("{}: {}", path.display(), e.0)))?;
    Ok((keys, text_digest(&text)))
}

/// How long a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

async fn fetch_jwks(client: &reqwest::Client, url: &str) -> Result<Loaded, KeyError> {
    let response = client
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| KeyError(format!("{url}: {e}")))?;
    let text = response
        .text()
        .await
        .map_err(|e| KeyError(format!("{url}: {e}")))?;
    let keys = parse_jwks(&text).map_err(|e| KeyError(format!("{url}: {}", e.0)))?;
    Ok((keys, text_digest(&text)))
}

fn parse_jwks(text: &str) -> Result<HashMap<String, Key>, KeyError> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| KeyError(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let algorithm = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            // Symmetric keys (and anything newer) have no place in a public key set.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError(format!("key {kid}: {e}")))?;
        keys.insert(kid, Key { algorithm, key });
    }
    Ok(keys)
}

impl JwtVerifier {
    /// Loads the configured keys.
    pub fn new(settings: JwtSettings) -> Result<Self, KeyError> {
        let mut pem_keys = HashMap::new();
        for path in &settings.public_key_files {
            let pem =
                std::fs::read(path).map_err(|e| KeyError(format!("{}: {e}", path.display())))?;
            let kid = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            pem_keys.insert(
                kid,
                key_from_pem(&pem).map_err(|e| KeyError(format!("{}: {}", path.display(), e.0)))?,
            );
        }
        let (jwks, digest) = match &settings.jwks_file {
            Some(path) => {
                let (keys, digest) = read_jwks(path)?;
                (keys, Some(digest))
            }
            None => (HashMap::new(), None),
        };
        if pem_keys.is_empty() && jwks.is_empty() && settings.jwks_url.is_none() {
            return Err(KeyError(
                "no public keys configured (public_key_files, jwks_file or jwks_url)".into(),
            ));
        }
        // With a URL the set is fetched on first use; a file was just read.
        let next_reload_ms = match digest.filter(|_| settings.jwks_url.is_none()) {
            Some(_) => settings.jwks_refresh_secs.saturating_mul(1000),
            None => u64::MAX,
        };
        Ok(Self {
            settings,
            http: std::sync::OnceLock::new(),
            pem_keys,
            keys: RwLock::new(jwks),
            keys_digest: std::sync::Mutex::new(digest),
            next_reload_ms: std::sync::atomic::AtomicU64::new(next_reload_ms),
            started: Instant::now(),
            last_unknown_kid: std::sync::Mutex::new(None),
            verified: verified_cache(),
            key_generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A verifier for one PEM public key under `kid` (dev mode and tests).
    pub fn from_pem(kid: &str, pem: &[u8], issuer: &str, audience: &str) -> Result<Self, KeyError> {
        let mut pem_keys = HashMap::new();
        pem_keys.insert(kid.to_owned(), key_from_pem(pem)?);
        Ok(Self {
            settings: JwtSettings {
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                ..JwtSettings::default()
            },
            http: std::sync::OnceLock::new(),
            pem_keys,
            keys: RwLock::new(HashMap::new()),
            keys_digest: std::sync::Mutex::new(None),
            next_reload_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            started: Instant::now(),
            last_unknown_kid: std::sync::Mutex::new(None),
            verified: verified_cache(),
            key_generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn key(&self, kid: Option<&str>) -> Option<Key> {
        let jwks = self.keys.read().ok()?;
        match kid {
            Some(kid) => self.pem_keys.get(kid).or_else(|| jwks.get(kid)).cloned(),
            // Without a kid the key is only unambiguous when there is one.
            None => {
                let mut all = self.pem_keys.values().chain(jwks.values());
                match (all.next(), all.next()) {
                    (Some(only), None) => Some(only.clone()),
                    _ => None,
                }
            }
        }
    }

    /// Takes `slot` if it was last taken at least `every` ago (or never),
    /// marking it now; the time is taken before the read, so a burst of
    /// callers causes one read, not one each.
    fn take(slot: &std::sync::Mutex<Option<Instant>>, every: Duration) -> bool {
        let Ok(mut last) = slot.lock() else {
            return false;
        };
        if last.is_some_and(|at| at.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Re-reads the JWKS file or URL and installs what it holds; a set that
    /// changed makes every remembered token be checked again.
    async fn reload(&self) {
        let loaded = match (&self.settings.jwks_url, &self.settings.jwks_file) {
            (Some(url), _) => fetch_jwks(self.http.get_or_init(http_client), url).await,
            (None, Some(path)) => read_jwks(path),
            (None, None) => return,
        };
        // The next scheduled read is one interval after this one.
        let next = self
            .elapsed_ms()
            .saturating_add(self.settings.jwks_refresh_secs.saturating_mul(1000));
        self.next_reload_ms
            .store(next, std::sync::atomic::Ordering::Release);
        match loaded {
            Ok((fresh, digest)) => {
                let Ok(mut installed) = self.keys_digest.lock() else {
                    return;
                };
                if *installed == Some(digest) {
                    return;
                }
                if let Ok(mut keys) = self.keys.write() {
                    *keys = fresh;
                    *installed = Some(digest);
                    self.key_generation
                        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
            }
            Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the current keys"),
        }
    }

    fn has_jwks(&self) -> bool {
        self.settings.jwks_file.is_some() || self.settings.jwks_url.is_some()
    }

    /// The scheduled re-read, when one is due: done by the one caller that
    /// finds it due (a file read, or a fetch bounded by its timeout), before
    /// that caller's token is checked.
    async fn refresh_if_due(&self) {
        if !self.has_jwks() || self.settings.jwks_refresh_secs == 0 {
            return;
        }
        use std::sync::atomic::Ordering;
        let now = self.elapsed_ms();
        let due = self.next_reload_ms.load(Ordering::Acquire);
        if now < due {
            return;
        }
        // One caller wins the due read; the others go on with the keys.
        let later = now.saturating_add(self.settings.jwks_refresh_secs.saturating_mul(1000));
        if self
            .next_reload_ms
            .compare_exchange(due, later, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.reload().await;
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// A re-read for a token with an unknown `kid`, at most once per
    /// `jwks_unknown_kid_refresh_secs` (apart from the schedule).
    async fn refresh_for_unknown_kid(&self) {
        if !self.has_jwks() {
            return;
        }
        let every = Duration::from_secs(self.settings.jwks_unknown_kid_refresh_secs);
        if Self::take(&self.last_unknown_kid, every) {
            self.reload().await;
        }
    }

    /// Verifies `token` and returns who it speaks for.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        match self.remembered(token).await {
            Ok(principal) => Ok(principal),
            Err(unremembered) => self.verify_unremembered(token, unremembered).await,
        }
    }

    /// Who `token` speaks for if it verified lately under the current keys
    /// (no signature check: the cheap path, which a caller's failed
    /// attempts never block); otherwise what [`JwtVerifier::verify_unremembered`]
    /// needs to check it in full.
    pub async fn remembered(&self, token: &str) -> Result<Principal, Unremembered> {
        self.refresh_if_due().await;
        let key_generation = self
            .key_generation
            .load(std::sync::atomic::Ordering::Acquire);
        if let Some(hit) = self.verified.get(token) {
            // Strictly before exp, and under the same keys: a remembered
            // token is never trusted later than a fresh check would.
            if now_secs() < hit.exp && hit.key_generation == key_generation {
                return Ok(hit.principal.clone());
            }
            self.verified.invalidate(token);
        }
        Err(Unremembered { key_generation })
    }

    /// The full check of a token [`JwtVerifier::remembered`] did not know;
    /// remembers it if it verifies.
    pub async fn verify_unremembered(
        &self,
        token: &str,
        Unremembered { key_generation }: Unremembered,
    ) -> Result<Principal, AuthError> {
        let (principal, exp) = self.verify_signature(token).await?;
        if now_secs() < exp {
            self.verified.insert(
                Arc::from(token),
                Arc::new(Verified {
                    principal: principal.clone(),
                    exp,
                    key_generation,
                }),
            );
        }
        Ok(principal)
    }

    /// The full check: key, algorithm, signature and claims.
    async fn verify_signature(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let header = decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed token: {e}")))?;
        // `jku`, `x5u` and embedded `jwk` are deliberately ignored: keys come
        // only from configuration.
        let key = match self.key(header.kid.as_deref()) {
            Some(key) => key,
            None => {
                self.refresh_for_unknown_kid().await;
                self.key(header.kid.as_deref())
                    .ok_or_else(|| AuthError::Invalid(format!("unknown key id {:?}", header.kid)))?
            }
        };
        if header.alg != key.algorithm {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} not allowed for this key (expects {:?})",
                header.alg, key.algorithm
            )));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.settings.leeway_secs.min(MAX_LEEWAY_SECS);
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        let data = decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty sub".into()));
        }
        Ok((
            Principal {
                subject: data.claims.sub.into(),
                roles: data.claims.roles.into(),
            },
            data.claims.exp,
        ))
    }
}
