//! What a service's `auth` settings hold, and the layer built from them.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{
    AuthLayer, JwtSettings, JwtVerifier, Policy,
    api_keys::{
        ApiKeyRecord, ApiKeyVerifier, KeyStore, KeyStores, LocalRateLimiter, RateLimiter,
        StaticKeys,
    },
    jwt::KeyError,
    limits::{CallerLimits, Quota},
};

/// Authentication settings (`AUTH__JWT__…` in the environment, `auth:` in YAML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// Where bearer tokens' public keys come from, and what they must say.
    pub jwt: JwtSettings,
    /// API keys accepted besides those the user service manages (e.g. the
    /// order service's own key, provisioned from a Secret): hashes only.
    pub api_keys: Vec<ApiKeyRecord>,
    /// Replaces the default RBAC table when set.
    pub policy: Option<Policy>,
    /// Failed authentications allowed per peer (a burst, then a rate);
    /// beyond it the peer's unverified credentials are refused unchecked.
    /// Rate 0: no limit.
    pub failed_auth_per_peer: Quota,
    /// A header a trusted proxy in front sets to the client's address
    /// (e.g. `x-envoy-external-address`); without it the peer is the TCP
    /// client's IP address. Never set it where clients reach the service
    /// directly: they could name any peer.
    pub peer_header: Option<String>,
    /// Calls per second allowed to each JWT caller (by `sub`) of a role;
    /// roles not listed, or with rate 0, are not limited.
    pub role_limits: BTreeMap<String, Quota>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        let quota = |rate_per_sec, burst| Quota {
            rate_per_sec,
            burst,
        };
        Self {
            jwt: JwtSettings::default(),
            api_keys: Vec::new(),
            policy: None,
            failed_auth_per_peer: quota(1.0, 20),
            peer_header: None,
            role_limits: BTreeMap::from([
                ("user".to_owned(), quota(100.0, 200)),
                ("guest".to_owned(), quota(10.0, 20)),
            ]),
        }
    }
}

impl AuthSettings {
    /// The limits these settings describe; fails on a `peer_header` that
    /// is not a header name.
    pub fn caller_limits(&self) -> Result<CallerLimits, KeyError> {
        let peer_header = self
            .peer_header
            .as_deref()
            .map(|name| {
                http::HeaderName::try_from(name.trim().to_ascii_lowercase())
                    .map_err(|e| KeyError(format!("auth.peer_header {name:?}: {e}")))
            })
            .transpose()?;
        Ok(CallerLimits::new(
            self.failed_auth_per_peer.from_settings(),
            peer_header,
            self.role_limits
                .iter()
                .filter_map(|(role, q)| Some((role.clone(), q.from_settings()?))),
        ))
    }

    /// The layer these settings describe; fails when no key is configured,
    /// so a service never starts unprotected by accident.
    pub fn layer(&self) -> Result<AuthLayer, KeyError> {
        self.layer_with(StaticKeys::default(), LocalRateLimiter::default())
    }

    /// Like [`AuthSettings::layer`], also accepting the keys in `store`
    /// (the user service's managed keys) after those from settings, with
    /// key rate limits enforced by `limiter`.
    pub fn layer_with(
        &self,
        store: impl KeyStore,
        limiter: impl RateLimiter,
    ) -> Result<AuthLayer, KeyError> {
        let verifier = JwtVerifier::new(self.jwt.clone())?;
        let configured = StaticKeys(
            self.api_keys
                .iter()
                .map(|k| (k.id.clone(), k.clone()))
                .collect::<HashMap<_, _>>(),
        );
        Ok(AuthLayer::new(
            Arc::new(verifier),
            Arc::new(self.policy.clone().unwrap_or_default()),
        )
        .with_limits(self.caller_limits()?)
        .with_api_keys(Arc::new(ApiKeyVerifier::with_limiter(
            // Keys from settings first, then the other store.
            KeyStores(vec![Box::new(configured), Box::new(store)]),
            limiter,
        ))))
    }
}
