//! The tower layer that guards a tonic server.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tower::Layer;

use crate::{
    AuthError, JwtVerifier, Principal,
    api_keys::{ApiKeyVerifier, KeyRefusal},
    limits::CallerLimits,
    rbac::{Access, Policy},
};

/// Parsed once (a lookup by `&str` parses the name on every call).
static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// Authenticates and authorizes every call before it reaches a service.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Arc<JwtVerifier>,
    api_keys: Option<Arc<ApiKeyVerifier>>,
    policy: Arc<Policy>,
    limits: Arc<CallerLimits>,
}

/// RESOURCE_EXHAUSTED with `google.rpc.RetryInfo`.
pub(crate) fn exhausted(message: &str, wait: std::time::Duration) -> tonic::Status {
    let mut details = tonic_types::ErrorDetails::new();
    details.set_retry_info(Some(wait));
    <tonic::Status as tonic_types::StatusExt>::with_error_details(
        tonic::Code::ResourceExhausted,
        message,
        details,
    )
}

fn epoch_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl AuthLayer {
    pub fn new(verifier: Arc<JwtVerifier>, policy: Arc<Policy>) -> Self {
        Self {
            verifier,
            api_keys: None,
            policy,
            limits: Arc::default(),
        }
    }

    /// Limits failed authentications per peer and calls per JWT caller by
    /// role (none by default).
    pub fn with_limits(mut self, limits: CallerLimits) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    /// Also accepts `x-api-key` credentials checked by `api_keys`.
    pub fn with_api_keys(mut self, api_keys: Arc<ApiKeyVerifier>) -> Self {
        self.api_keys = Some(api_keys);
        self
    }

    /// The caller of a request to `path`: an authenticated principal allowed to call it.
    ///
    /// A credential that costs work to check (a signature, a key store
    /// query) is checked only while its peer has failed authentications
    /// left in its budget; a token verified lately, or an API key from
    /// settings, is checked whatever its peer's failures, so a caller behind
    /// a busy address — every caller, behind a sidecar — keeps working.
    async fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Option<Principal>, tonic::Status> {
        if self.policy.access(path) == Access::Public {
            return Ok(None);
        }
        let principal = match (headers.get(&X_API_KEY), &self.api_keys) {
            (Some(key), Some(api_keys)) => {
                let key = key
                    .to_str()
                    .map_err(|_| AuthError::Invalid("x-api-key is not text".into()))?;
                let key = key.trim();
                // Named only when needed: a service's own key costs no
                // address lookup on its way.
                let peer = (!api_keys.is_local(key)).then(|| self.limits.peer(headers, extensions));
                if let Some(peer) = &peer {
                    self.limits.admit_peer(peer)?;
                }
                match api_keys.verify(key, epoch_secs()).await {
                    Ok(principal) => principal,
                    Err(KeyRefusal::Auth(e)) => {
                        let peer = peer.unwrap_or_else(|| self.limits.peer(headers, extensions));
                        self.limits.failed(&peer, &e);
                        return Err(e.into());
                    }
                    Err(KeyRefusal::RateLimited(wait)) => {
                        return Err(exhausted("API key rate limit reached; retry later", wait));
                    }
                }
            }
            _ => {
                let header = headers
                    .get(http::header::AUTHORIZATION)
                    .ok_or(AuthError::Missing)?;
                let token = header
                    .to_str()
                    .ok()
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    })
                    .ok_or_else(|| {
                        AuthError::Invalid("authorization is not a Bearer token".into())
                    })?
                    .trim();
                let principal = match self.verifier.remembered(token).await {
                    Ok(principal) => principal,
                    Err(unremembered) => {
                        let peer = self.limits.peer(headers, extensions);
                        self.limits.admit_peer(&peer)?;
                        self.verifier
                            .verify_unremembered(token, unremembered)
                            .await
                            .inspect_err(|e| self.limits.failed(&peer, e))?
                    }
                };
                self.limits.take_call(&principal)?;
                principal
            }
        };
        self.policy.authorize(&principal, path)?;
        Ok(Some(principal))
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for Auth<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S: Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The inner service was made ready by poll_ready; take it, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            match layer
                .admit(
                    request.uri().path(),
                    request.headers(),
                    request.extensions(),
                )
                .await
            {
                Ok(principal) => {
                    if let Some(principal) = principal {
                        request.extensions_mut().insert(principal);
                    }
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}
