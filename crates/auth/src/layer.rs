//! The tower layer that guards a tonic server.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tower::Layer;

use crate::{
    AuthError, JwtVerifier, Principal,
    rbac::{Access, Policy},
};

/// Authenticates and authorizes every call before it reaches a service.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Arc<JwtVerifier>,
    policy: Arc<Policy>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<JwtVerifier>, policy: Arc<Policy>) -> Self {
        Self { verifier, policy }
    }

    /// The caller of `request`: an authenticated principal allowed to call its path.
    fn admit<B>(&self, request: &http::Request<B>) -> Result<Option<Principal>, AuthError> {
        let path = request.uri().path();
        if self.policy.access(path) == Access::Public {
            return Ok(None);
        }
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| AuthError::Invalid("authorization is not a Bearer token".into()))?;
        let principal = self.verifier.verify(token.trim())?;
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
    S::Future: Send + 'static,
    S::Error: Send + 'static,
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
        match self.layer.admit(&request) {
            Ok(principal) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                Box::pin(self.inner.call(request))
            }
            Err(error) => {
                let status: tonic::Status = error.into();
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
