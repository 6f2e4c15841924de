//! Authentication and authorization for every mercato gRPC server.
//!
//! - [`jwt::JwtVerifier`]: `authorization: Bearer <JWT>` verified against
//!   configured public keys (PEM files or a JWKS file) selected by `kid`;
//!   algorithms pinned per key (RS256, ES256 or EdDSA — never `none`, never
//!   HMAC with a public key); `exp`, `nbf`, `iss` and `aud` required and
//!   checked with at most 30 s of leeway; `jku`/`x5u` headers never followed;
//!   an unknown `kid` re-reads the JWKS file at most once per interval, so
//!   keys can rotate with old and new accepted during the overlap.
//! - [`api_keys`]: `x-api-key` keys (prefix, id, secret, checksum), stored
//!   only as hashes, compared in constant time, with expiry, revocation and
//!   a per-key rate limit (RESOURCE_EXHAUSTED with `google.rpc.RetryInfo`);
//! - [`rbac::Policy`]: role → permissions and RPC full method → permission,
//!   with the defaults of the article (admin, user, guest) plus `service`;
//!   methods missing from the table are denied.
//! - [`layer::AuthLayer`]: a tower layer for tonic servers that
//!   authenticates, authorizes, and puts the caller's [`Principal`] into the
//!   request extensions for handlers (ownership checks stay in handlers).
//!   Health and reflection stay open.

pub mod api_keys;
pub mod dev_keys;
pub mod jwt;
pub mod layer;
pub mod limits;
pub mod rbac;
pub mod role;
pub mod settings;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use jwt::{JwtSettings, JwtVerifier};
pub use layer::AuthLayer;
pub use rbac::Policy;
pub use role::Role;
pub use settings::AuthSettings;

/// Who is calling, once authenticated. Cheap to clone (a remembered token
/// hands out the same principal on every call without copying it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The user id (JWT `sub`) or the API key's owner.
    pub subject: Arc<str>,
    /// Roles, e.g. `user`, `admin`, `service`.
    pub roles: Arc<[String]>,
}

impl Principal {
    /// Whether the caller has the built-in `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.iter().any(|r| r == role.as_str())
    }

    /// Admins and services act on anyone's resources.
    pub fn privileged(&self) -> bool {
        self.has_role(Role::Admin) || self.has_role(Role::Service)
    }

    /// Whether the caller may act on resources owned by `owner`: its own,
    /// or anyone's when privileged.
    pub fn may_access(&self, owner: &str) -> bool {
        self.privileged() || &*self.subject == owner
    }

    /// `Ok` if the caller may act on `owner`'s resources, else
    /// PERMISSION_DENIED — the same answer whether or not the resource
    /// exists (AIP-211), so ids cannot be probed.
    pub fn ensure_access(&self, owner: &str) -> Result<(), tonic::Status> {
        if self.may_access(owner) {
            Ok(())
        } else {
            Err(denied())
        }
    }

    /// For a lookup that found nothing: NOT_FOUND for privileged callers,
    /// PERMISSION_DENIED for everyone else (AIP-211).
    pub fn not_found(&self, what: &str) -> tonic::Status {
        if self.privileged() {
            tonic::Status::not_found(format!("{what} not found"))
        } else {
            denied()
        }
    }
}

fn denied() -> tonic::Status {
    tonic::Status::permission_denied("permission denied")
}

/// The authenticated caller of a request (set by [`AuthLayer`]).
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("missing credentials"))
}

/// Why a caller was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials at all.
    #[error("missing credentials: send `authorization: Bearer <token>` or `x-api-key`")]
    Missing,
    /// Credentials that do not verify; the reason is logged, not sent.
    #[error("invalid credentials")]
    Invalid(String),
    /// Authenticated, but the role may not call this method.
    #[error("permission denied")]
    Forbidden,
    /// The credentials could not be checked right now (a key store is down).
    #[error("credentials cannot be checked right now")]
    Unavailable(String),
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Missing => tonic::Status::unauthenticated(error.to_string()),
            AuthError::Invalid(reason) => {
                tracing::info!(%reason, "credentials rejected");
                tonic::Status::unauthenticated("invalid credentials")
            }
            AuthError::Forbidden => tonic::Status::permission_denied("permission denied"),
            AuthError::Unavailable(reason) => {
                tracing::warn!(%reason, "credentials cannot be checked");
                tonic::Status::unavailable("credentials cannot be checked right now; retry")
            }
        }
    }
}
