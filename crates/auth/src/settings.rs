//! What a service's `auth` settings hold, and the layer built from them.

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    AuthLayer, JwtSettings, JwtVerifier, Policy,
    api_keys::{
        ApiKeyRecord, ApiKeyVerifier, KeyStore, KeyStores, LocalRateLimiter, RateLimiter,
        StaticKeys,
    },
    jwt::KeyError,
};

/// Authentication settings (`AUTH__JWT__…` in the environment, `auth:` in YAML).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// Where bearer tokens' public keys come from, and what they must say.
    pub jwt: JwtSettings,
    /// API keys accepted besides those the user service manages (e.g. the
    /// order service's own key, provisioned from a Secret): hashes only.
    pub api_keys: Vec<ApiKeyRecord>,
    /// Replaces the default RBAC table when set.
    pub policy: Option<Policy>,
}

impl AuthSettings {
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
        .with_api_keys(Arc::new(ApiKeyVerifier::with_limiter(
            // Keys from settings first, then the other store.
            KeyStores(vec![Box::new(configured), Box::new(store)]),
            limiter,
        ))))
    }
}
