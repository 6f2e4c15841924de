//! `mercato bench-ceiling`: the bare tonic server the bench compares with.
//!
//! It answers `user.v1.UserService/GetUser` (and `CreateUser`, so the
//! get-user scenario can seed it exactly as it seeds the real service) from
//! a map in memory, with no layers at all: no telemetry, no auth, no load
//! shedding, no deadline. Whatever the real stack costs on top of this is
//! the price of its layers, its cache and its allocator.

use std::{collections::HashMap, net::SocketAddr, pin::Pin, sync::RwLock};

use clap::Args;
use mercato_proto::user::v1::{
    CreateApiKeyRequest, CreateApiKeyResponse, CreateUserRequest, CreateUserResponse,
    DeleteUserRequest, DeleteUserResponse, GetUserRequest, GetUserResponse, ListApiKeysRequest,
    ListApiKeysResponse, ListUsersRequest, ListUsersResponse, RevokeApiKeyRequest,
    RevokeApiKeyResponse, SetUserStatusRequest, SetUserStatusResponse, StreamUserActivityRequest,
    UpdateUserRequest, UpdateUserResponse, User, UserActivityEvent,
    user_service_server::{UserService, UserServiceServer},
};
use tonic::{Request, Response, Status};

#[derive(Debug, Args)]
pub(crate) struct CeilingArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9490")]
    addr: SocketAddr,
}

/// Users by id, as the ceiling keeps them.
#[derive(Debug, Default)]
struct MapUsers {
    users: RwLock<HashMap<String, User>>,
    next: std::sync::atomic::AtomicU64,
}

type Stream = Pin<Box<dyn tokio_stream::Stream<Item = Result<UserActivityEvent, Status>> + Send>>;

fn not_here<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the bench ceiling answers GetUser and CreateUser only",
    ))
}

#[tonic::async_trait]
impl UserService for MapUsers {
    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        let request = request.into_inner();
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let user = User {
            user_id: format!("00000000-0000-7000-8000-{n:012x}"),
            email: request.email,
            full_name: request.full_name,
            preferences: request.preferences,
            ..User::default()
        };
        let mut users = self
            .users
            .write()
            .map_err(|_| Status::internal("poisoned"))?;
        users.insert(user.user_id.clone(), user.clone());
        Ok(Response::new(CreateUserResponse {
            user: Some(user),
            message: "user created".into(),
        }))
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let users = self
            .users
            .read()
            .map_err(|_| Status::internal("poisoned"))?;
        match users.get(&request.get_ref().user_id) {
            Some(user) => Ok(Response::new(GetUserResponse {
                user: Some(user.clone()),
            })),
            None => Err(Status::not_found("no such user")),
        }
    }

    async fn update_user(
        &self,
        _: Request<UpdateUserRequest>,
    ) -> Result<Response<UpdateUserResponse>, Status> {
        not_here()
    }

    async fn list_users(
        &self,
        _: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        not_here()
    }

    async fn delete_user(
        &self,
        _: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        not_here()
    }

    async fn set_user_status(
        &self,
        _: Request<SetUserStatusRequest>,
    ) -> Result<Response<SetUserStatusResponse>, Status> {
        not_here()
    }

    type StreamUserActivityStream = Stream;

    async fn stream_user_activity(
        &self,
        _: Request<StreamUserActivityRequest>,
    ) -> Result<Response<Self::StreamUserActivityStream>, Status> {
        not_here()
    }

    async fn create_api_key(
        &self,
        _: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        not_here()
    }

    async fn list_api_keys(
        &self,
        _: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        not_here()
    }

    async fn revoke_api_key(
        &self,
        _: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        not_here()
    }
}

/// Serves until the process is stopped.
pub(crate) async fn serve(args: CeilingArgs) -> Result<(), Box<dyn std::error::Error>> {
    // A bare server has no telemetry, so h2's and hyper's own spans and
    // events must cost what they cost there: one check of a disabled
    // callsite. Without any subscriber, `tracing`'s `log` feature (which
    // sqlx turns on in this binary) would route each of them to the `log`
    // crate instead, about 5 % of this server's time.
    tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default())?;
    let users = MapUsers::default();
    eprintln!("bench ceiling listening on {}", args.addr);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(UserServiceServer::new(users))
        .serve(args.addr)
        .await?;
    Ok(())
}
