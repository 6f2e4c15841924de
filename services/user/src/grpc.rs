//! `user.v1.UserService` over [`Users`]: decode and validate the request,
//! call the use case, encode the answer. Errors become statuses in one place
//! (`impl From<UserError> for Status`).

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use mercato_activity::ActivityEvent;
use mercato_api::{FieldViolation, pagination};
use mercato_auth::{api_keys::ApiKeyRecord, caller};
use mercato_proto::user::v1::{self as pb, user_service_server::UserService};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    api_keys::ApiKeyStore,
    domain::{self, Email, FullName, NewUser, Preferences, User, UserId, UserPatch, UserStatus},
    error::UserError,
    users::Users,
};

const PAGE_KIND: &str = "users";

/// The gRPC face of the user service.
#[derive(Debug, Clone)]
pub struct UserGrpc {
    users: Users,
    /// Admin-managed API keys.
    api_keys: ApiKeyStore,
    /// Ends open activity streams when the server starts draining.
    drain: CancellationToken,
}

impl UserGrpc {
    /// Serves `users`; streams end when `drain` is cancelled.
    pub fn new(users: Users, api_keys: ApiKeyStore, drain: CancellationToken) -> Self {
        Self {
            users,
            api_keys,
            drain,
        }
    }
}

type ActivityStream = Pin<Box<dyn Stream<Item = Result<pb::UserActivityEvent, Status>> + Send>>;

#[tonic::async_trait]
impl UserService for UserGrpc {
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let req = request.into_inner();
        let email = Email::parse(&req.email);
        let full_name = FullName::parse(&req.full_name);
        let preferences = req.preferences.map(preferences_from_pb).unwrap_or_default();
        let mut violations = preferences.validate("preferences");
        let (email, full_name) = match (email, full_name) {
            (Ok(email), Ok(name)) if violations.is_empty() => (email, name),
            (email, name) => {
                violations.splice(0..0, [email.err(), name.err()].into_iter().flatten());
                return Err(UserError::Invalid(violations).into());
            }
        };
        let user = self
            .users
            .create(NewUser {
                email,
                full_name,
                preferences,
            })
            .await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(user_to_pb(&user)),
            message: "user created".into(),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let id = parse_id(&request.get_ref().user_id)?;
        caller(&request)?.ensure_access(id.as_str())?;
        let user = self.users.get(&id).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user_to_pb(&user)),
        }))
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let principal = caller(&request)?;
        let req = request.into_inner();
        let id = UserId::parse("user_id", &req.user_id);
        let patch = patch_from_request(&req);
        let (id, patch) = match (id, patch) {
            (Ok(id), Ok(patch)) => (id, patch),
            (id, patch) => {
                let mut violations: Vec<_> = id.err().into_iter().collect();
                violations.extend(patch.err().unwrap_or_default());
                return Err(UserError::Invalid(violations).into());
            }
        };
        principal.ensure_access(id.as_str())?;
        let user = self.users.update(&id, patch).await?;
        Ok(Response::new(pb::UpdateUserResponse {
            user: Some(user_to_pb(&user)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let req = request.get_ref();
        let (size, after) = both(
            pagination::page_size(req.page_size),
            pagination::decode_token(PAGE_KIND, &req.page_token),
        )?;
        let page = self.users.list(after.as_deref(), size).await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: page.items.iter().map(user_to_pb).collect(),
            next_page_token: page.next_token(PAGE_KIND),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let id = parse_id(&request.get_ref().user_id)?;
        caller(&request)?.ensure_access(id.as_str())?;
        let user = self.users.delete(&id).await?;
        Ok(Response::new(pb::DeleteUserResponse {
            user: Some(user_to_pb(&user)),
        }))
    }

    async fn set_user_status(
        &self,
        request: Request<pb::SetUserStatusRequest>,
    ) -> Result<Response<pb::SetUserStatusResponse>, Status> {
        let req = request.get_ref();
        let (id, status) = both(
            UserId::parse("user_id", &req.user_id),
            status_from_pb(req.status),
        )?;
        caller(&request)?.ensure_access(id.as_str())?;
        let user = self.users.set_status(&id, status).await?;
        Ok(Response::new(pb::SetUserStatusResponse {
            user: Some(user_to_pb(&user)),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let req = request.into_inner();
        let mut violations = Vec::new();
        if req.owner.is_empty() || req.owner.len() > 128 || req.owner.chars().any(char::is_control)
        {
            violations.push(FieldViolation::new(
                "owner",
                "must be 1 to 128 printable characters",
            ));
        }
        if req.roles.is_empty()
            || req
                .roles
                .iter()
                .any(|r| mercato_auth::Role::from_name(r).is_none())
        {
            violations.push(FieldViolation::new(
                "roles",
                format!("must name one or more of {}", mercato_auth::Role::names()),
            ));
        }
        if req.ttl_seconds > 10 * 365 * 24 * 3600 {
            violations.push(FieldViolation::new(
                "ttl_seconds",
                "must be at most ten years",
            ));
        }
        if !violations.is_empty() {
            return Err(UserError::Invalid(violations).into());
        }
        let now = now_secs();
        let expires_at = (req.ttl_seconds > 0)
            .then(|| now + i64::try_from(req.ttl_seconds).unwrap_or(i64::MAX / 2));
        let issued =
            mercato_auth::api_keys::issue(&req.owner, req.roles, expires_at, req.rate_per_sec)
                .map_err(UserError::from)?;
        self.api_keys.insert(&issued.record, now).await?;
        tracing::info!(key_id = %issued.record.id, owner = %issued.record.owner, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: Some(key_to_pb(&issued.record, now)),
            api_key: issued.key,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let req = request.get_ref();
        let (size, after) = both(
            pagination::page_size(req.page_size),
            pagination::decode_token("api-keys", &req.page_token),
        )?;
        let fetched = self.api_keys.list(after.as_deref(), size + 1).await?;
        let page = pagination::Page::of(fetched, size, |k| k.record.id.clone());
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: page
                .items
                .iter()
                .map(|k| key_to_pb(&k.record, k.created_at))
                .collect(),
            next_page_token: page.next_token("api-keys"),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let key_id = &request.get_ref().key_id;
        if key_id.is_empty() || key_id.len() > 64 {
            return Err(UserError::invalid(FieldViolation::new("key_id", "is required")).into());
        }
        let stored = self
            .api_keys
            .revoke(key_id, now_secs())
            .await?
            .ok_or(UserError::ApiKeyNotFound)?;
        tracing::info!(%key_id, "API key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse {
            key: Some(key_to_pb(&stored.record, stored.created_at)),
        }))
    }

    type StreamUserActivityStream = ActivityStream;

    async fn stream_user_activity(
        &self,
        request: Request<pb::StreamUserActivityRequest>,
    ) -> Result<Response<Self::StreamUserActivityStream>, Status> {
        let req = request.get_ref();
        let (id, from) = both(
            UserId::parse("user_id", &req.user_id),
            req.from_time
                .as_ref()
                .map(|t| mercato_api::time::from_parts("from_time", t.seconds, t.nanos))
                .transpose(),
        )?;
        caller(&request)?.ensure_access(id.as_str())?;
        let events = self.users.activity(&id, from).await?;
        let stream = events
            .take_until(self.drain.clone().cancelled_owned())
            .map(|item| item.map(|e| event_to_pb(&e)).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Both values, or INVALID_ARGUMENT naming every bad field of the two.
fn both<A, B>(
    a: Result<A, FieldViolation>,
    b: Result<B, FieldViolation>,
) -> Result<(A, B), Status> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => {
            Err(UserError::Invalid([a.err(), b.err()].into_iter().flatten().collect()).into())
        }
    }
}

fn now_secs() -> i64 {
    mercato_activity::now_us() / 1_000_000
}

fn secs_to_timestamp(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
}

fn key_to_pb(record: &ApiKeyRecord, created_at: i64) -> pb::ApiKey {
    pb::ApiKey {
        key_id: record.id.clone(),
        owner: record.owner.clone(),
        roles: record.roles.clone(),
        created_at: Some(secs_to_timestamp(created_at)),
        expires_at: record.expires_at.map(secs_to_timestamp),
        revoked_at: record.revoked_at.map(secs_to_timestamp),
        rate_per_sec: record.rate_per_sec,
    }
}

fn parse_id(value: &str) -> Result<UserId, Status> {
    UserId::parse("user_id", value).map_err(|v| UserError::invalid(v).into())
}

fn status_from_pb(value: i32) -> Result<UserStatus, FieldViolation> {
    match pb::UserStatus::try_from(value) {
        Ok(pb::UserStatus::Active) => Ok(UserStatus::Active),
        Ok(pb::UserStatus::Inactive) => Ok(UserStatus::Inactive),
        Ok(pb::UserStatus::Suspended) => Ok(UserStatus::Suspended),
        Ok(pb::UserStatus::Unspecified) | Err(_) => Err(FieldViolation::new(
            "status",
            "must be USER_STATUS_ACTIVE, USER_STATUS_INACTIVE or USER_STATUS_SUSPENDED",
        )),
    }
}

fn status_to_pb(status: UserStatus) -> pb::UserStatus {
    match status {
        UserStatus::Active => pb::UserStatus::Active,
        UserStatus::Inactive => pb::UserStatus::Inactive,
        UserStatus::Suspended => pb::UserStatus::Suspended,
    }
}

fn preferences_from_pb(p: pb::UserPreferences) -> Preferences {
    Preferences {
        language: p.language,
        timezone: p.timezone,
        email_notifications: p.email_notifications,
    }
}

/// Builds the patch AIP-134 asks for: the mask's paths, or, without a mask,
/// every field the request sets.
fn patch_from_request(req: &pb::UpdateUserRequest) -> Result<UserPatch, Vec<FieldViolation>> {
    let prefs = req.preferences.clone().unwrap_or_default();
    let paths: Vec<String> = match &req.update_mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
        _ => {
            let mut implied = Vec::new();
            if !req.full_name.is_empty() {
                implied.push("full_name".to_owned());
            }
            if req.preferences.is_some() {
                implied.push("preferences".to_owned());
            }
            implied
        }
    };
    if paths.is_empty() {
        return Err(vec![FieldViolation::new(
            "update_mask",
            "names no field to change: set update_mask or the fields to update",
        )]);
    }
    let mut patch = UserPatch::default();
    let mut violations = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        match path.as_str() {
            "full_name" => match FullName::parse(&req.full_name) {
                Ok(name) => patch.full_name = Some(name),
                Err(v) => violations.push(v),
            },
            "preferences" => {
                patch.language = Some(prefs.language.clone());
                patch.timezone = Some(prefs.timezone.clone());
                patch.email_notifications = Some(prefs.email_notifications);
            }
            "preferences.language" => patch.language = Some(prefs.language.clone()),
            "preferences.timezone" => patch.timezone = Some(prefs.timezone.clone()),
            "preferences.email_notifications" => {
                patch.email_notifications = Some(prefs.email_notifications);
            }
            other => violations.push(FieldViolation::new(
                format!("update_mask.paths[{i}]"),
                format!(
                    "unknown path {:?}; allowed: full_name, preferences, preferences.language, \
                     preferences.timezone, preferences.email_notifications",
                    other.chars().take(32).collect::<String>()
                ),
            )),
        }
    }
    if let Some(language) = &patch.language {
        violations.extend(domain::validate_language("preferences.language", language).err());
    }
    if let Some(timezone) = &patch.timezone {
        violations.extend(domain::validate_timezone("preferences.timezone", timezone).err());
    }
    if violations.is_empty() {
        Ok(patch)
    } else {
        Err(violations)
    }
}

fn user_to_pb(user: &User) -> pb::User {
    pb::User {
        user_id: user.id.as_str().to_owned(),
        email: user.email.as_str().to_owned(),
        full_name: user.full_name.as_str().to_owned(),
        status: status_to_pb(user.status).into(),
        preferences: Some(pb::UserPreferences {
            language: user.preferences.language.clone(),
            timezone: user.preferences.timezone.clone(),
            email_notifications: user.preferences.email_notifications,
        }),
        created_at: Some(timestamp(user.created_at_us)),
        updated_at: Some(timestamp(user.updated_at_us)),
    }
}

fn event_to_pb(event: &ActivityEvent) -> pb::UserActivityEvent {
    pb::UserActivityEvent {
        event_id: event.event_id.clone(),
        user_id: event.user_id.clone(),
        event_type: event.event_type.clone(),
        metadata: event.metadata.clone().into_iter().collect(),
        timestamp: Some(timestamp(event.timestamp_us)),
    }
}

/// A `google.protobuf.Timestamp` of epoch microseconds.
fn timestamp(us: i64) -> prost_types::Timestamp {
    let (seconds, nanos) = mercato_api::time::to_parts(us);
    prost_types::Timestamp { seconds, nanos }
}
