//! Credentials for tests: one signing key pair per test process (a real
//! Ed25519 key, as the monolith generates), tokens for any subject and
//! roles, a service API key, and clients that attach them.

use std::{path::PathBuf, sync::OnceLock};

use mercato_auth::{
    AuthSettings, JwtSettings,
    api_keys::{IssuedKey, issue},
    dev_keys,
};
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

const KID: &str = "test-issuer";

struct Issuer {
    /// Keeps the public key file alive for the whole test process.
    _dir: tempfile::TempDir,
    public_key_file: PathBuf,
    private_pem: String,
    service_key: IssuedKey,
}

fn issuer() -> &'static Issuer {
    static ISSUER: OnceLock<Issuer> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let pair = dev_keys::generate().expect("test key pair");
        let dir = tempfile::tempdir().expect("temp dir");
        let public_key_file = dir.path().join(format!("{KID}.pem"));
        std::fs::write(&public_key_file, &pair.public_pem).expect("write public key");
        Issuer {
            _dir: dir,
            public_key_file,
            private_pem: pair.private_pem,
            service_key: issue("order-service", vec!["service".into()], None, 0)
                .expect("service key"),
        }
    })
}

/// Auth settings every test server uses: the test issuer's public key and
/// the service API key's record (hash only).
pub fn settings() -> AuthSettings {
    AuthSettings {
        jwt: JwtSettings {
            public_key_files: vec![issuer().public_key_file.clone()],
            ..JwtSettings::default()
        },
        api_keys: vec![issuer().service_key.record.clone()],
        // The shipped limits (failed authentications per peer, per-role caller rates).
        ..AuthSettings::default()
    }
}

/// The same settings as YAML (the `auth:` section of a config file).
pub fn settings_yaml() -> String {
    let mut root = std::collections::BTreeMap::new();
    root.insert("auth", settings());
    serde_yaml::to_string(&root).expect("yaml")
}

/// A token for `sub` with `roles`, valid for ten minutes.
pub fn token(sub: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    dev_keys::mint(
        &issuer().private_pem,
        KID,
        "mercato",
        "mercato",
        sub,
        &roles,
        600,
    )
    .expect("token")
}

/// A token of an administrator.
pub fn admin() -> String {
    token("admin-0", &["admin"])
}

/// The plaintext service API key (what the order service is given).
pub fn service_key() -> String {
    issuer().service_key.key.clone()
}

/// Attaches one credential header (`authorization` or `x-api-key`) to every request.
#[derive(Clone, Debug)]
pub struct Credential(&'static str, AsciiMetadataValue);

impl Interceptor for Credential {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(self.0, self.1.clone());
        Ok(request)
    }
}

/// A channel whose calls carry a credential.
pub type AuthedChannel = InterceptedService<Channel, Credential>;

/// `channel` acting with a bearer `token`.
pub fn with_token(channel: Channel, token: &str) -> AuthedChannel {
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    InterceptedService::new(channel, Credential("authorization", value))
}

/// `channel` acting with an API `key`.
pub fn with_api_key(channel: Channel, key: &str) -> AuthedChannel {
    let value: MetadataValue<_> = key.parse().expect("ascii key");
    InterceptedService::new(channel, Credential("x-api-key", value))
}
